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
