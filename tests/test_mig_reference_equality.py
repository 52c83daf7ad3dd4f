"""MIG through the Dagster assets equals the reference on pools from the benchmark generator.

With the reference's inputs (imported InsTag tags, its valid-tag file, precomputed label vectors,
a budget as a count), ``mig_selection`` must pick the reference's samples in the reference's order,
element by element: tags are taken as written (the valid-tag file alone decides), and ties go to
the earlier sample in input order (shards in registration order, then lines), as the reference's
argmax does on its file.
"""

import json

import dagster as dg
import duckdb
import pytest

from benchmarks.mig_synthetic import generate
from mig_assets.core.mig import MigParams, build_problem, embedding_lookup, select
from mig_assets.core.mig_pool import load_valid_tags, read_pool
from mig_assets.core.mig_sample import load_label_embeddings
from tests.conftest import MIG_FIXTURES

SHARD_ASSETS = ("raw_pool", "atomic_tags", "quality_scores")
GLOBAL_ASSETS = ("tag_vocabulary", "tag_embeddings", "label_graph", "mig_selection")


def reference_order(paths, picks: int) -> list[str]:
    """The reference path (core/mig.py as ``mig sample`` runs it): original ids of the picks, in order."""
    pool = read_pool(paths.pool, load_valid_tags(paths.valid_tags))
    embed = embedding_lookup(*load_label_embeddings(paths.label_embeddings_prefix))
    problem = build_problem(pool.tag_indptr, pool.tag_ids, pool.tags, pool.scores, embed, MigParams())
    order = select(problem.propagated, picks, MigParams()).order
    return [f"s{int(line) - 1:07d}" for line in pool.line_numbers[order]]  # the generator's _id of line n is n - 1


def first_difference(actual: list[str], expected: list[str]) -> str:
    for pick, (a, e) in enumerate(zip(actual, expected), start=1):
        if a != e:
            return f"first differing pick: {pick} (asset {a}, reference {e})"
    return "identical" if len(actual) == len(expected) else f"lengths differ: {len(actual)} vs {len(expected)}"


def asset_order(layout, instance, resources, paths, shards: list[str], picks: int) -> list[str]:
    from mig_assets.definitions import defs

    assets = list(defs.assets)
    instance.add_dynamic_partitions("pool_shards", shards)  # registration order = input order
    per_shard = [a for a in assets if a.key.to_user_string() in SHARD_ASSETS]
    for shard in shards:
        assert dg.materialize(assets, selection=per_shard, partition_key=shard, instance=instance, resources=resources).success
    run_config = {"ops": {
        "tag_embeddings": {"config": {"label_embeddings_prefix": str(paths.label_embeddings_prefix)}},
        "label_graph": {"config": {"tau": 0.9, "valid_tag_path": str(paths.valid_tags)}},
        "mig_selection": {"config": {"budget_count": picks, "budget_fraction": None}},
    }}
    chosen = [a for a in assets if a.key.to_user_string() in GLOBAL_ASSETS]
    assert dg.materialize(assets, selection=chosen, instance=instance, resources=resources, run_config=run_config).success
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        return [i for (i,) in con.execute(
            "SELECT s.original_id FROM selection_members m JOIN samples s USING (sample_id) "
            "WHERE m.selection = 'mig_selection' ORDER BY m.rank"
        ).fetchall()]


@pytest.mark.parametrize(
    "records, labels, picks, n_shards",
    [(20_000, 1_000, 2_000, 2), (50_000, 2_000, 500, 1)],
    ids=["20k-x-1k-2000-picks-2-shards", "50k-x-2k-500-picks"],
)
def test_mig_asset_gives_the_reference_pick_order(records, labels, picks, n_shards, tmp_path, layout, instance, resources):
    # label names drawn from the reference's valid-tag list, as benchmarks/bench_mig.py does
    paths = generate(tmp_path / "generated", records, labels, seed=7, vocabulary=MIG_FIXTURES / "valid_tags.json")
    lines = paths.pool.read_bytes().splitlines(keepends=True)
    # shard names sort against their registration order, so a sort by key would break the tie rule
    shards = [f"{'zyx'[i]}_part{i}.jsonl" for i in range(n_shards)]
    size = -(-len(lines) // n_shards)
    for i, shard in enumerate(shards):
        (layout.incoming_dir / shard).write_bytes(b"".join(lines[i * size : (i + 1) * size]))
    expected = reference_order(paths, picks)
    actual = asset_order(layout, instance, resources, paths, shards, picks)
    assert len(expected) == picks
    assert first_difference(actual, expected) == "identical"
    vocabulary = json.loads(paths.valid_tags.read_text())
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        (n_labels,) = con.execute("SELECT count(*) FROM label_graph_labels").fetchone()
    assert n_labels <= len(vocabulary)
