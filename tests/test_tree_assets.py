"""knowledge_tree as an asset, with the real offline embedding model: synonyms share a leaf."""

import dagster as dg
import duckdb
import pyarrow as pa

from mig_assets.embeddings.assets import tag_embeddings
from mig_assets.tree.assets import knowledge_tree

SYNONYMS = [("python programming", "python coding"), ("baking bread", "bread baking recipe"), ("sorting algorithm", "sort algorithm")]
OTHERS = ["roman empire history", "world war history", "french cuisine", "guitar chords", "music theory", "linear algebra", "matrix multiplication"]


def test_tree_from_real_embeddings_groups_synonyms(layout, instance, resources):
    tags = [t for pair in SYNONYMS for t in pair] + OTHERS
    with duckdb.connect(str(layout.duckdb_path)) as con:
        con.register("v", pa.table({"tag": tags, "n_samples": [5] * len(tags)}))
        con.execute("CREATE TABLE tag_vocabulary AS SELECT * FROM v")
    config = {"ops": {"knowledge_tree": {"config": {"branching": 2, "top_size": 3}}}}
    runs = [dg.materialize([tag_embeddings, knowledge_tree], instance=instance, resources=resources, run_config=config) for _ in range(2)]
    meta = [r.asset_materializations_for_node("knowledge_tree")[0].metadata for r in runs]
    assert meta[0]["tree_version"].value == meta[1]["tree_version"].value  # deterministic
    assert meta[0]["tags"].value == len(tags) and meta[0]["depth"].value >= 3
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        leaf = dict(con.execute("SELECT tag, leaf FROM tree_tags").fetchall())
        levels = dict(con.execute("SELECT node_id, level FROM tree_nodes").fetchall())
        names = [n for (n,) in con.execute("SELECT name FROM tree_nodes WHERE level = 1").fetchall()]
    assert set(leaf) == set(tags) and all(levels[node] == 1 for node in leaf.values())  # every tag on a leaf
    for a, b in SYNONYMS:
        assert leaf[a] == leaf[b], (a, b)
    assert len(set(leaf.values())) >= 4 and all(names)


def test_tags_selection_covers_more_of_the_tree_than_random(layout, instance, resources):
    import json
    import shutil

    from mig_assets.core.specs import SelectionSpec
    from mig_assets.definitions import defs
    from mig_assets.selection.assets import build_selection_asset
    from tests.conftest import MIG_FIXTURES

    shutil.copyfile(MIG_FIXTURES / "p2k.jsonl", layout.incoming_dir / "p2k.jsonl")
    instance.add_dynamic_partitions("pool_shards", ["p2k.jsonl"])
    specs = [SelectionSpec("tags_small", method="tags", budget={"count": 50}), SelectionSpec("random_small", method="random", budget={"count": 50})]
    selections = [build_selection_asset(spec) for spec in specs]
    assets = [a for a in defs.assets if a.key.to_user_string() in ("raw_pool", "atomic_tags", "tag_vocabulary", "tag_embeddings", "knowledge_tree")]
    dg.materialize(assets, selection=[a for a in assets if a.partitions_def], partition_key="p2k.jsonl", instance=instance, resources=resources)
    run_config = {"ops": {"tag_embeddings": {"config": {"label_embeddings_prefix": str(MIG_FIXTURES / "p2k")}}}}
    result = dg.materialize(
        assets + selections, selection=[a for a in assets if not a.partitions_def] + selections,
        instance=instance, resources=resources, run_config=run_config,
    )
    meta = result.asset_materializations_for_node("tags_small")[0].metadata
    assert meta["dagster/row_count"].value == 50 and "data:image/png" in meta["plots"].value
    coverage = meta["coverage_by_level"].value
    assert "1" in coverage and 0 < coverage["1"] <= 1
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        leaves_reached = dict(con.execute(
            """SELECT m.selection, count(DISTINCT t.leaf) FROM selection_members m
               JOIN atomic_tags a USING (sample_id), unnest(a.tags) AS u(tag) JOIN tree_tags t ON t.tag = u.tag
               GROUP BY m.selection"""
        ).fetchall())
        gains = [g for (g,) in con.execute("SELECT gain FROM selection_members WHERE selection = 'tags_small' ORDER BY rank").fetchall()]
    assert leaves_reached["tags_small"] > leaves_reached["random_small"]
    assert all(b <= a + 1e-9 for a, b in zip(gains, gains[1:]))  # submodular: gains never grow
    exported = [json.loads(line) for line in (layout.exports_dir / "tags_small" / "v0001" / "data.jsonl").read_text().splitlines()]
    assert len(exported) == 50
