"""Benchmark MIG selection end to end (``run_sample``: read pool, build graph, select, write) on synthetic pools.

    python benchmarks/bench_mig.py [--size small|medium|paper] [--seed 0]

Sizes (records × labels, picks):
  small   50,000 × 2,000,   500 picks; also runs the straightforward dense greedy (the reference's
          loop, float32 GEMV gains) in the same process and compares time and order
  medium 200,000 × 4,531, 10,000 picks
  paper  939,000 × 4,531, 50,000 picks (the paper's Tulu3 pool and budget)

Pools come from ``mig_synthetic.py`` (tag names from the reference vocabulary when
``shared/fixtures/mig_reference/valid_tags.json`` is present) and are cached under benchmarks/.cache/.
Generation runs in a child process, so the peak RSS reported is that of the selection run alone.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.mig_synthetic import synthetic_paths  # noqa: E402
from mig_assets.core.mig.algorithm import select, select_dense  # noqa: E402
from mig_assets.core.mig.problem import MigParams, build_problem, embedding_lookup  # noqa: E402
from mig_assets.core.mig.reference_jsonl import load_valid_tags, read_pool  # noqa: E402
from mig_assets.core.mig.sample import load_label_embeddings, run_sample  # noqa: E402

CACHE = REPO / "benchmarks" / ".cache"
VOCABULARY = REPO.parent / "shared" / "fixtures" / "mig_reference" / "valid_tags.json"


@dataclass(frozen=True)
class Size:
    records: int
    labels: int
    picks: int
    compare_dense: bool = False


SIZES = {
    "small": Size(50_000, 2_000, 500, compare_dense=True),
    "medium": Size(200_000, 4_531, 10_000),
    "paper": Size(939_000, 4_531, 50_000),
}


def ensure_pool(name: str, size: Size, seed: int) -> Path:
    directory = CACHE / f"{name}-seed{seed}"
    if not synthetic_paths(directory).pool.exists():
        command = [
            sys.executable,
            str(REPO / "benchmarks" / "mig_synthetic.py"),
            str(directory),
            "--records",
            str(size.records),
            "--labels",
            str(size.labels),
            "--seed",
            str(seed),
        ]
        if VOCABULARY.exists():
            command += ["--vocabulary", str(VOCABULARY)]
        started = time.perf_counter()
        subprocess.run(command, check=True)
        print(f"generated {directory} in {time.perf_counter() - started:.1f} s")
    return directory


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def compare_with_dense(directory: Path, picks: int, params: MigParams) -> None:
    paths = synthetic_paths(directory)
    pool = read_pool(paths.pool, load_valid_tags(paths.valid_tags))
    embed = embedding_lookup(*load_label_embeddings(paths.label_embeddings_prefix))
    Y = build_problem(pool.tag_indptr, pool.tag_ids, pool.tags, pool.scores, embed, params).propagated

    started = time.perf_counter()
    lazy = select(Y, picks, params).order
    lazy_s = time.perf_counter() - started
    started = time.perf_counter()
    dense = select_dense(Y, picks, params, gain_dtype=np.float32)
    dense_s = time.perf_counter() - started
    agree = int(np.argmax(lazy != dense)) if (lazy != dense).any() else len(lazy)
    print(f"\ndense greedy (reference loop, float32 GEMV): {dense_s:.2f} s; lazy select: {lazy_s:.3f} s; ratio {dense_s / lazy_s:.0f}x")
    print(f"orders agree: {agree == len(lazy)} (identical prefix: {agree} of {len(lazy)} picks)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = SIZES[args.size]
    directory = ensure_pool(args.size, size, args.seed)
    paths = synthetic_paths(directory)
    params = MigParams()

    stats = run_sample(
        paths.pool,
        directory / "selected.jsonl",
        size.picks,
        valid_tag_path=paths.valid_tags,
        label_embeddings_prefix=paths.label_embeddings_prefix,
        params=params,
    )
    peak = peak_rss_mib()
    print(f"\n{args.size}: {size.records:,} records × {size.labels:,} labels, {size.picks:,} picks")
    for phase, seconds in stats["timings_s"].items():
        print(f"  {phase:<7} {seconds:8.2f} s")
    print(f"  peak RSS {peak:,.0f} MiB")
    for key in ("records_kept", "records_dropped", "labels", "graph_edges", "propagated_nnz", "gain_evaluations"):
        print(f"  {key:<17} {stats[key]:,}")
    lazy = stats["gain_evaluations"] - stats["records_kept"]
    print(f"  lazy re-evaluations {lazy:,} ({lazy / size.picks:.1f} per pick)")
    if size.compare_dense:
        compare_with_dense(directory, size.picks, params)


if __name__ == "__main__":
    main()
