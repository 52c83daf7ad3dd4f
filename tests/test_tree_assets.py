"""knowledge_tree as an asset, with the real offline embedding model: synonyms share a leaf."""

import json

import dagster as dg
import duckdb
import pyarrow as pa
import pytest

from mig_assets.core.store.catalog import open_catalog, replace_table
from mig_assets.defs.embeddings.assets import tag_embeddings
from mig_assets.defs.tree.assets import knowledge_tree

SYNONYMS = [("python programming", "python coding"), ("baking bread", "bread baking recipe"), ("sorting algorithm", "sort algorithm")]
OTHERS = ["roman empire history", "world war history", "french cuisine", "guitar chords", "music theory", "linear algebra", "matrix multiplication"]


def test_tree_from_real_embeddings_groups_synonyms(layout, instance, resources):
    tags = [t for pair in SYNONYMS for t in pair] + OTHERS
    with open_catalog(layout) as con:
        replace_table(con, "tag_vocabulary", pa.table({"tag": tags, "n_samples": [5] * len(tags)}))
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


def test_tree_version_names_the_clustering_method(layout, instance, resources, monkeypatch):
    """The same tags, vectors and config clustered by another K-Means get another tree version, so that a
    target profile built on the old tree is refused rather than read against new leaves."""
    tags = [t for pair in SYNONYMS for t in pair] + OTHERS
    with open_catalog(layout) as con:
        replace_table(con, "tag_vocabulary", pa.table({"tag": tags, "n_samples": [5] * len(tags)}))
    config = {"ops": {"knowledge_tree": {"config": {"branching": 2, "top_size": 3}}}}
    dg.materialize([tag_embeddings], instance=instance, resources=resources)

    def tree_version() -> str:
        result = dg.materialize([knowledge_tree], instance=instance, resources=resources, run_config=config)
        return result.asset_materializations_for_node("knowledge_tree")[0].metadata["tree_version"].value

    before = tree_version()
    monkeypatch.setattr("mig_assets.defs.tree.assets.CLUSTERING_METHOD", "another K-Means")
    assert tree_version() != before


def test_tags_selection_covers_more_of_the_tree_than_random(layout, instance, resources):
    import json
    import shutil

    from mig_assets.core.selection.specs import SelectionSpec
    from mig_assets.definitions import defs
    from mig_assets.defs.selection.assets import build_selection_asset
    from tests.conftest import MIG_FIXTURES

    shutil.copyfile(MIG_FIXTURES / "p2k.jsonl", layout.incoming_dir / "p2k.jsonl")
    instance.add_dynamic_partitions("pool_shards", ["p2k.jsonl"])
    specs = [SelectionSpec("tags_small", method="tags", budget={"count": 50}), SelectionSpec("random_small", method="random", budget={"count": 50})]
    selections = [build_selection_asset(spec) for spec in specs]
    names = ("raw_pool", "atomic_tags", "tag_vocabulary", "tag_embeddings", "knowledge_tree", "target_profile")
    assets = [a for a in defs.assets if a.key.to_user_string() in names]
    dg.materialize(assets, selection=[a for a in assets if a.partitions_def], partition_key="p2k.jsonl", instance=instance, resources=resources)
    run_config = {"ops": {"tag_embeddings": {"config": {"label_embeddings_prefix": str(MIG_FIXTURES / "p2k")}}}}
    result = dg.materialize(
        assets + selections,
        selection=[a for a in assets if not a.partitions_def] + selections,
        instance=instance,
        resources=resources,
        run_config=run_config,
    )
    meta = result.asset_materializations_for_node("tags_small")[0].metadata
    assert meta["dagster/row_count"].value == 50 and "data:image/png" in meta["plots"].value
    assert "kl_target_selection" not in meta  # no target set: nothing to report against
    assert result.asset_materializations_for_node("target_profile")[0].metadata["dagster/row_count"].value == 0
    aligned = build_selection_asset(SelectionSpec("tags_aligned", method="tags", budget={"count": 50}, params={"align": "penalty"}))
    failed = dg.materialize(assets + [aligned], selection=[aligned], instance=instance, resources=resources, raise_on_error=False)
    assert not failed.success
    [failure] = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "no target profile: set target.path in MIG_HOME/mig.yaml" in failure.event_specific_data.error.cause.message
    coverage = meta["coverage_by_level"].value
    assert "1" in coverage and 0 < coverage["1"] <= 1
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        leaves_reached = dict(
            con.execute(
                """SELECT m.selection, count(DISTINCT t.leaf) FROM selection_members m
               JOIN atomic_tags a USING (sample_id), unnest(a.tags) AS u(tag) JOIN tree_tags t ON t.tag = u.tag
               GROUP BY m.selection"""
            ).fetchall()
        )
        gains = [g for (g,) in con.execute("SELECT gain FROM selection_members WHERE selection = 'tags_small' ORDER BY rank").fetchall()]
    assert leaves_reached["tags_small"] > leaves_reached["random_small"]
    assert all(b <= a + 1e-9 for a, b in zip(gains, gains[1:]))  # submodular: gains never grow
    exported = [json.loads(line) for line in (layout.exports_dir / "tags_small" / "v0001" / "data.jsonl").read_text().splitlines()]
    assert len(exported) == 50
    # explain recomputes a rejected sample's final tree-level gain: E(S + i) - E(S), against the last pick's
    from mig_assets.core.outputs.explain import explain
    from mig_assets.core.selection.inputs import load_pool
    from mig_assets.core.selection.run import tags_problem
    from mig_assets.core.tags.information import objective
    from mig_assets.core.tags.tree import load_tree

    tree, _ = load_tree(layout.knowledge_tree_dir)
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        pool, *_ = load_pool(con, shard_order=["p2k.jsonl"])
        picked = {sid for (sid,) in con.execute("SELECT sample_id FROM selection_members WHERE selection = 'tags_small'").fetchall()}
        problem = tags_problem(pool, tree)
        rows = [i for i, sid in enumerate(pool.sample_ids) if sid in picked]
        rejected = [i for i, sid in enumerate(pool.sample_ids) if sid not in picked and pool.tags[i]][:3]
        for i in rejected:
            fate = explain(con, pool.sample_ids[i], "tags_small", tree=tree)["selection"]
            expected = objective(problem, rows + [i]) - objective(problem, rows)
            assert fate["selected"] is False and fate["gain_at_end"] == pytest.approx(expected, rel=1e-6, abs=1e-12)
            assert fate["gain_at_end"] <= fate["last_pick_gain"] + 1e-9 and "tree nodes" in fate["why_not"]
        assert "no tree to recompute it" in explain(con, pool.sample_ids[rejected[0]], "tags_small")["selection"]["why_not"]


def test_target_profile_and_aligned_selection_through_the_assets(layout, instance, resources):
    """Demo pool + demo target (coding and math) with the real embedding model: the aligned TAGS
    selection ends closer to the target than the unaligned one, and both report KL and plots."""
    from mig_assets.core.selection.specs import SelectionSpec
    from mig_assets.definitions import defs
    from mig_assets.defs.selection.assets import build_selection_asset
    from mig_assets.defs.tree.assets import target_profile
    from mig_assets.demo_pool import write_demo_pool, write_demo_target

    paths = write_demo_pool(layout.incoming_dir / "demo")
    target_file = write_demo_target(layout.home / "targets")
    keys = [layout.shard_key(p) for p in paths]
    instance.add_dynamic_partitions("pool_shards", keys)
    names = ("raw_pool", "atomic_tags", "tag_vocabulary", "tag_embeddings", "knowledge_tree")
    assets = [a for a in defs.assets if a.key.to_user_string() in names] + [target_profile]
    for key in keys:
        dg.materialize(assets, selection=[a for a in assets if a.partitions_def], partition_key=key, instance=instance, resources=resources)
    specs = [
        SelectionSpec("tags_plain", method="tags", budget={"count": 12}),
        SelectionSpec("tags_aligned", method="tags", budget={"count": 12}, params={"align": "penalty", "lam": 5.0}),
        SelectionSpec("tags_quota", method="tags", budget={"count": 12}, params={"align": "quota"}),
    ]
    selections = [build_selection_asset(spec) for spec in specs]
    tree_config = {"ops": {"knowledge_tree": {"config": {"branching": 3, "top_size": 3, "min_count": 1}}}}
    result = dg.materialize(
        assets + selections,
        selection=[a for a in assets if not a.partitions_def] + selections,
        instance=instance,
        resources=resources,
        run_config=tree_config,
    )
    profile = result.asset_materializations_for_node("target_profile")[0].metadata
    assert profile["dagster/row_count"].value == 24 and profile["samples_grounded"].value == {"tags": 24}
    assert profile["tag_source"].value == "imported annotations" and profile["unassigned_samples"].value == 0
    meta = {spec.name: result.asset_materializations_for_node(spec.name)[0].metadata for spec in specs}
    kl = {name: m["kl_target_selection"].value for name, m in meta.items()}
    assert kl["tags_aligned"] < kl["tags_plain"] and kl["tags_quota"] < kl["tags_plain"], kl
    assert meta["tags_plain"]["kl_target_pool"].value == meta["tags_aligned"]["kl_target_pool"].value
    for name in ("tags_plain", "tags_aligned"):
        plots = meta[name]["plots"].value
        assert "![kl_vs_target](data:image/png" in plots and "![tree_coverage](data:image/png" in plots
        assert meta[name]["leaf_entropy"].value > 0 and set(meta[name]["coverage_by_level"].value) >= {"1", "2"}
        assert (layout.exports_dir / name / "v0001" / "kl_vs_target.png").stat().st_size > 1000
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        shares = [s for (s,) in con.execute("SELECT share FROM target_profile ORDER BY leaf_id").fetchall()]
        source, tree_version = con.execute("SELECT source, tree_version FROM target_info").fetchall()[0]
        manifest_inputs = json.loads((layout.exports_dir / "tags_aligned" / "v0001" / "manifest.json").read_text())["inputs"]
    assert abs(sum(shares) - 1) < 1e-9 and source == str(layout.home / "targets")
    assert {"knowledge_tree", "target_profile"} <= set(manifest_inputs)

    # the same target grounded by its text alone (what a tagger without a model can do): the leaves
    # reached by text mostly agree with those reached by the tags
    text_config = {"ops": {"target_profile": {"config": {"path": str(target_file), "grounding": "text"}}}}
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        by_tags = dict(con.execute("SELECT sample_id, leaf_ids FROM target_samples").fetchall())
    by_text = dg.materialize(assets, selection=[target_profile], instance=instance, resources=resources, run_config=text_config)
    grounded = by_text.asset_materializations_for_node("target_profile")[0].metadata["samples_grounded"].value
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        text_leaf = dict(con.execute("SELECT sample_id, leaf_ids[1] FROM target_samples WHERE grounding = 'text'").fetchall())
    agree = sum(leaf in by_tags[sample_id] for sample_id, leaf in text_leaf.items())
    assert grounded.get("text", 0) >= 12 and agree >= 0.6 * len(text_leaf), (grounded, agree)


QUESTIONS = [
    "sort python lists",
    "bake sourdough bread",
    "solve linear equations",
    "explain roman history",
    "tune guitar strings",
    "multiply large matrices",
    "write haiku poems",
    "compute prime numbers",
]
NEW_QUESTIONS = ["sort integer arrays", "integrate polynomial functions", "bake rye bread"]


def tagged_pool_and_tree(layout, instance, resources, tagger) -> tuple[list, dict]:
    """The pool of QUESTIONS tagged by ``tagger`` (an LLM tagger), its tree, and a target file holding half
    the pool's questions and NEW_QUESTIONS; returns the assets and the pool's tags by question."""
    from mig_assets.definitions import defs
    from mig_assets.defs.tagging.assets import build_atomic_tags
    from mig_assets.defs.tree.assets import target_profile
    from tests.conftest import materialize_shards

    path = layout.incoming_dir / "questions.jsonl"
    path.write_text("".join(json.dumps({"prompt": q, "response": f"answer to {q}"}) + "\n" for q in QUESTIONS))
    materialize_shards(instance, resources, layout, [path])
    target = layout.home / "targets" / "target.jsonl"
    target.parent.mkdir(parents=True)
    target.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUESTIONS[::2] + NEW_QUESTIONS))
    tagging = {**resources, "tagger": tagger}
    dg.materialize([build_atomic_tags(tagger.version())], partition_key=layout.shard_key(path), instance=instance, resources=tagging)
    names = ("tag_vocabulary", "tag_embeddings", "knowledge_tree")
    assets = [a for a in defs.assets if a.key.to_user_string() in names] + [target_profile]
    tree_config = {"ops": {"knowledge_tree": {"config": {"branching": 3, "top_size": 2, "min_count": 1}}}}
    dg.materialize(assets, selection=[a for a in assets if a.key.to_user_string() in names], instance=instance, resources=tagging, run_config=tree_config)
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        pool_tags = dict(con.execute("SELECT s.messages[1].content, t.tags FROM atomic_tags t JOIN samples s USING (sample_id)").fetchall())
    return assets, pool_tags


def materialize_target(assets, instance, resources, tagger, execution) -> tuple[dict, dict]:
    """target_profile alone (grounded by tags); its metadata and each target question's tags."""
    config = {"ops": {"target_profile": {"config": {"grounding": "tags"}}}}
    result = dg.materialize(
        assets,
        selection=["target_profile"],
        instance=instance,
        resources={**resources, "tagger": tagger, "execution": execution},
        run_config=config,
    )
    metadata = {k: v.value for k, v in result.asset_materializations_for_node("target_profile")[0].metadata.items()}
    mig_home = resources["warehouse"].mig_home
    with duckdb.connect(f"{mig_home}/warehouse/mig.duckdb", read_only=True) as con:
        tags = dict(con.execute("SELECT text, tags FROM target_samples").fetchall())
    return metadata, tags


def test_target_profile_tags_through_the_pools_tag_cache(layout, instance, resources):
    """An LLM tagger tags the target set through atomic_tags' path: the texts the pool already has come
    from the tag cache, with the pool's tags, and only the new texts go to the model."""
    from mig_assets.resources import Execution
    from tests.fakes import FakeTagger

    tagger = FakeTagger()
    assets, pool_tags = tagged_pool_and_tree(layout, instance, resources, tagger)
    metadata, target_tags = materialize_target(assets, instance, resources, tagger, Execution())
    assert metadata["tag_source"] == f"vllm:fake-model ({tagger.prompt_version})"
    assert (metadata["from_cache"], metadata["newly_tagged"]) == (len(QUESTIONS[::2]), len(NEW_QUESTIONS))
    assert all(target_tags[q] == pool_tags[q] for q in QUESTIONS[::2])
    assert all(target_tags[q] for q in NEW_QUESTIONS)
    again, _ = materialize_target(assets, instance, resources, tagger, Execution())
    assert (again["from_cache"], again["newly_tagged"]) == (len(QUESTIONS[::2]) + len(NEW_QUESTIONS), 0)


@pytest.mark.ray
def test_target_profile_tags_on_ray_as_it_does_locally(layout, instance, resources):
    """With the Execution resource on Ray, the target's new texts are tagged on the cluster into the same
    cache, and the target gets the same tags as with local execution."""
    pytest.importorskip("ray")
    import shutil

    from mig_assets.resources import Execution
    from tests.fakes import FakeTagger

    tagger = FakeTagger()
    assets, _ = tagged_pool_and_tree(layout, instance, resources, tagger)
    local, local_tags = materialize_target(assets, instance, resources, tagger, Execution())
    shutil.rmtree(layout.warehouse_dir / "tag_cache")  # everything is tagged again, on the cluster
    on_ray, ray_tags = materialize_target(assets, instance, resources, tagger, Execution(mode="ray", num_cpus=2, object_store_mb=256, batch_size=4))
    assert on_ray["execution"] == "ray" and on_ray["ray_batches"] == 2  # 7 distinct texts in batches of 4
    assert (on_ray["newly_tagged"], on_ray["from_cache"]) == (len(QUESTIONS[::2]) + len(NEW_QUESTIONS), 0)
    assert ray_tags == local_tags and local["samples_grounded"] == on_ray["samples_grounded"]
