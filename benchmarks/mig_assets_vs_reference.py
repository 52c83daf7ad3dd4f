"""MIG through the Dagster assets against the reference path, pick by pick, on a generated pool.

    python benchmarks/mig_assets_vs_reference.py [--size small|medium|paper] [--seed 0] [--shards 1]

The pool (``bench_mig.py``'s sizes and cache) is split into ``--shards`` files registered in order
(input order), ingested with ``raw_pool``, tagged with the imported annotations and scored with
the imported Deita scores, then ``tag_vocabulary`` -> ``tag_embeddings`` (the generator's label
vectors) -> ``label_graph`` (its valid-tag file, tau 0.9) -> ``mig_selection`` (a count budget)
run in a temporary MIG_HOME. The reference path is ``core/mig/algorithm.py`` on ``read_pool``'s view of the
same file, as ``mig-assets sample`` runs it. Prints "identical" or the first differing pick, and
wall times.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_mig import SIZES, ensure_pool  # noqa: E402
from benchmarks.mig_synthetic import SyntheticPool, synthetic_paths  # noqa: E402
from mig_assets.core.mig.algorithm import select  # noqa: E402
from mig_assets.core.mig.problem import MigParams, build_problem, embedding_lookup  # noqa: E402
from mig_assets.core.mig.reference_jsonl import load_valid_tags, read_pool  # noqa: E402
from mig_assets.core.mig.sample import load_label_embeddings  # noqa: E402

SHARD_ASSETS = ("raw_pool", "atomic_tags", "quality_scores")
GLOBAL_ASSETS = ("tag_vocabulary", "tag_embeddings", "label_graph", "mig_selection")


def reference_order(paths: SyntheticPool, picks: int) -> list[str]:
    """The reference path (core/mig/algorithm.py as ``mig sample`` runs it): the ``_id`` of each pick, in order."""
    pool = read_pool(paths.pool, load_valid_tags(paths.valid_tags))
    embed = embedding_lookup(*load_label_embeddings(paths.label_embeddings_prefix))
    problem = build_problem(pool.tag_indptr, pool.tag_ids, pool.tags, pool.scores, embed, MigParams())
    order = select(problem.propagated, picks, MigParams()).order
    return [f"s{int(line) - 1:07d}" for line in pool.line_numbers[order]]  # the generator's _id of line n is n - 1


def first_difference(actual: list[str], expected: list[str]) -> str:
    """ "identical", or the first pick (1-based) where the two orders differ."""
    for pick, (a, e) in enumerate(zip(actual, expected), start=1):
        if a != e:
            return f"first differing pick: {pick} (assets {a}, reference {e})"
    return "identical" if len(actual) == len(expected) else f"lengths differ: {len(actual)} vs {len(expected)}"


def split_into_shards(pool_file: Path, incoming: Path, n_shards: int) -> list[str]:
    """Cut the pool into ``n_shards`` files whose names sort against their order (z_, y_, ...), so that
    only the registration order, not the key order, can give the input order. Returns them in order."""
    lines = pool_file.read_bytes().splitlines(keepends=True)
    size = -(-len(lines) // n_shards)
    shards = [f"{chr(ord('z') - i)}_part{i}.jsonl" for i in range(n_shards)]
    for i, shard in enumerate(shards):
        (incoming / shard).write_bytes(b"".join(lines[i * size : (i + 1) * size]))
    return shards


def asset_order(duckdb_path: Path, instance, resources: dict, paths: SyntheticPool, shards: list[str], picks: int) -> list[str]:
    """Register ``shards`` (files already in pool/incoming) in order, materialize the MIG chain, and
    return the original ids of ``mig_selection``'s picks in rank order."""
    import dagster as dg
    import duckdb

    from mig_assets.definitions import defs

    assets = list(defs.assets)
    instance.add_dynamic_partitions("pool_shards", shards)
    per_shard = [a for a in assets if a.key.to_user_string() in SHARD_ASSETS]
    for shard in shards:
        assert dg.materialize(assets, selection=per_shard, partition_key=shard, instance=instance, resources=resources).success
    run_config = {
        "ops": {
            "tag_embeddings": {"config": {"label_embeddings_prefix": str(paths.label_embeddings_prefix)}},
            "label_graph": {"config": {"tau": 0.9, "valid_tag_path": str(paths.valid_tags)}},
            "mig_selection": {"config": {"budget_count": picks, "budget_fraction": None}},
        }
    }
    chosen = [a for a in assets if a.key.to_user_string() in GLOBAL_ASSETS]
    assert dg.materialize(assets, selection=chosen, instance=instance, resources=resources, run_config=run_config).success
    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        return [
            i
            for (i,) in con.execute(
                "SELECT s.original_id FROM selection_members m JOIN samples s USING (sample_id) WHERE m.selection = 'mig_selection' ORDER BY m.rank"
            ).fetchall()
        ]


def main() -> None:
    import dagster as dg

    from mig_assets.core.store.layout import WarehouseLayout
    from mig_assets.resources import Embedder, Execution, Scorer, Tagger, Warehouse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shards", type=int, default=1)
    args = parser.parse_args()
    size = SIZES[args.size]
    paths = synthetic_paths(ensure_pool(args.size, size, args.seed))

    started = time.perf_counter()
    expected = reference_order(paths, size.picks)
    reference_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as home, dg.DagsterInstance.ephemeral() as instance:
        layout = WarehouseLayout(Path(home)).ensure()
        resources = {
            "warehouse": Warehouse(mig_home=home),
            "embedder": Embedder(device="cpu"),
            "tagger": Tagger(),
            "execution": Execution(),
            "scorer": Scorer(),
        }
        shards = split_into_shards(paths.pool, layout.incoming_dir, args.shards)
        started = time.perf_counter()
        actual = asset_order(layout.duckdb_path, instance, resources, paths, shards, size.picks)
        assets_s = time.perf_counter() - started
    print(f"\n{args.size}: {size.records:,} records x {size.labels:,} labels, {size.picks:,} picks, {args.shards} shard(s)")
    print(f"  reference path {reference_s:8.1f} s")
    print(f"  assets         {assets_s:8.1f} s (ingest, tags, scores, vocabulary, embeddings, graph, selection)")
    print(f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    print(f"  pick order: {first_difference(actual, expected)}")


if __name__ == "__main__":
    main()
