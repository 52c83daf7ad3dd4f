"""Benchmark TAGS selection and tree building on seeded synthetic data.

    python benchmarks/bench_tags.py [--size small|full] [--seed 0] [--modes none,penalty,hard,quota]
                                    [--skip-tree] [--skip-baselines]

Sizes (samples × leaves, picks; tags for the tree build):
  small    50,000 ×  1,000,  2,000 picks;  5,000 tags
  full  1,000,000 × 10,000, 50,000 picks; 50,000 tags

The pool: a levelled tree with 4 concept levels (leaves, ÷10, ÷100, ÷1000 nodes, random fan-out)
under a root; 5 canonical tags per leaf with Zipf popularity; 1–7 tags per sample, 3% of them
unassigned; quality rank-normalised. The target for the aligned run comes from 2,000 "target"
samples whose tags are drawn from a tenth of the top-level subtrees. Data are cached under
benchmarks/.cache/ and generated in a child process, so the peak RSS reported is the run's own.

Phases: grounding (tags → leaves → leaf-weight matrix A), path matrix (U = diag(q)·A·Ω), lazy
selection in each of ``--modes`` (default unaligned and aligned penalty, λ = 1; hard uses the
default cap, decaying from 1.0 to 0.1 over the first half of the picks; e.g. ``--modes hard
--skip-baselines --skip-tree`` times hard mode alone). Baselines in the same process: the dense
greedy (every score recomputed at every pick) on the first 20,000 samples for 100 picks, against
the lazy selection on the same, and MIG's lazy ``select`` (exact gain) on the full U (against the
unaligned run, when it ran). Tree: ``build_tree`` on random clustered 384-d embeddings.
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

from mig_assets.core.mig import algorithm as mig
from mig_assets.core.mig import problem as mig_problem  # noqa: E402
from mig_assets.core.tags.build import build_tree  # noqa: E402
from mig_assets.core.tags.dense import select_dense  # noqa: E402
from mig_assets.core.tags.information import coverage_by_level, leaf_entropy  # noqa: E402
from mig_assets.core.tags.modes import select  # noqa: E402
from mig_assets.core.tags.params import TagsParams  # noqa: E402
from mig_assets.core.tags.problem import build_problem, leaf_weights, rank_normalize, target_distribution  # noqa: E402

CACHE = REPO / "benchmarks" / ".cache"


@dataclass(frozen=True)
class Size:
    samples: int
    leaves: int
    picks: int
    tree_tags: int


SIZES = {"small": Size(50_000, 1_000, 2_000, 5_000), "full": Size(1_000_000, 10_000, 50_000, 50_000)}
TAGS_PER_LEAF = 5
UNASSIGNED = 0.03
TARGET_SAMPLES = 2_000
MODES = {
    "none": ("unaligned", TagsParams(align="none")),
    "penalty": ("aligned penalty", TagsParams(align="penalty")),
    "hard": ("aligned hard", TagsParams(align="hard")),
    "quota": ("aligned quota", TagsParams(align="quota")),
}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def synthetic_tree(rng: np.random.Generator, n_leaves: int) -> tuple[np.ndarray, np.ndarray]:
    """parents, levels: 4 concept levels of about n, n/10, n/100, n/1000 nodes with random fan-out, and a root."""
    sizes = [n_leaves, max(n_leaves // 10, 1), max(n_leaves // 100, 1), max(n_leaves // 1000, 1)]
    parents, levels, offset = [], [], 0
    for depth, n_here in enumerate(sizes):
        levels.append(np.full(n_here, depth + 1))
        if depth + 1 < len(sizes):
            n_above = sizes[depth + 1]
            # every parent gets at least one child, the rest at random; children sorted by parent
            assignment = np.sort(np.concatenate([np.arange(n_above), rng.integers(n_above, size=n_here - n_above)]))
            parents.append(assignment + offset + n_here)
        else:
            parents.append(np.full(n_here, offset + n_here))
        offset += n_here
    levels.append(np.array([len(sizes) + 1]))
    parents.append(np.array([-1]))
    return np.concatenate(parents).astype(np.int64), np.concatenate(levels).astype(np.int64)


def generate(path: Path, size: Size, seed: int) -> None:
    rng = np.random.default_rng(seed)
    parents, levels = synthetic_tree(rng, size.leaves)
    n_tags = size.leaves * TAGS_PER_LEAF
    tag_leaf = rng.permutation(np.repeat(np.arange(size.leaves), TAGS_PER_LEAF))
    tag_leaf[rng.random(n_tags) < UNASSIGNED] = -1  # tags the grounding could not place
    popularity = 1.0 / rng.permutation(np.arange(1, n_tags + 1)) ** 1.1
    popularity /= popularity.sum()
    per_sample = rng.integers(1, 8, size=size.samples)
    tags = rng.choice(n_tags, size=int(per_sample.sum()), p=popularity)
    scores = rng.gamma(2.0, 2.0, size=size.samples)  # a Deita-like positive score
    # the target set: samples drawn from a tenth of the top-level subtrees
    top = np.flatnonzero(levels == levels.max() - 1)
    ancestor = np.arange(len(parents))
    while True:
        up = np.where(np.isin(ancestor, top) | (parents[ancestor] < 0), ancestor, parents[ancestor])
        if (up == ancestor).all():
            break
        ancestor = up
    focus = rng.choice(top, size=max(1, len(top) // 10), replace=False)
    in_focus = np.isin(ancestor[np.maximum(tag_leaf, 0)], focus) & (tag_leaf >= 0)
    target_popularity = np.where(in_focus, popularity, 0.0)
    target_popularity /= target_popularity.sum()
    target_tags = rng.choice(n_tags, size=TARGET_SAMPLES * 4, p=target_popularity)
    np.savez(path, parents=parents, levels=levels, tag_leaf=tag_leaf, per_sample=per_sample, tags=tags, scores=scores, target_tags=target_tags)


def load(size_name: str, seed: int) -> dict:
    path = CACHE / f"tags-{size_name}-seed{seed}.npz"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        code = (
            f"import sys; sys.path.insert(0, {str(REPO)!r}); from benchmarks.bench_tags import *; generate(Path({str(path)!r}), SIZES[{size_name!r}], {seed})"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
        print(f"generated {path.name} in {time.perf_counter() - started:.1f} s")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


class Timer:
    """Wall time per phase, with this process's CPU time beside it (the two differ on a busy machine)."""

    def __init__(self):
        self.phases: list[tuple[str, float, float, float]] = []

    def __call__(self, name: str, fn, *args, **kwargs):
        started, cpu = time.perf_counter(), time.process_time()
        result = fn(*args, **kwargs)
        self.phases.append((name, time.perf_counter() - started, peak_rss_mib(), time.process_time() - cpu))
        return result

    def report(self) -> None:
        for name, seconds, rss, cpu in self.phases:
            print(f"  {name:<38} {seconds:8.2f} s ({cpu:7.2f} s CPU)   peak RSS so far {rss:8,.0f} MiB")


def clustered_embeddings(n_tags: int, seed: int, dimensions: int = 384) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(n_tags // 16, 1), dimensions)).astype(np.float32)
    noise = 0.7 * rng.normal(size=(n_tags, dimensions)).astype(np.float32)
    return centres[rng.integers(len(centres), size=n_tags)] + noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default="none,penalty", help="comma-separated selection modes to time: none, penalty, hard, quota")
    parser.add_argument("--skip-tree", action="store_true")
    parser.add_argument("--skip-baselines", action="store_true")
    args = parser.parse_args()
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if not modes or any(mode not in MODES for mode in modes):
        parser.error(f"--modes takes a comma-separated subset of {', '.join(MODES)}")
    size = SIZES[args.size]
    data = load(args.size, args.seed)
    timer = Timer()
    n_leaves = int(np.count_nonzero(data["levels"] == 1))

    def ground():
        indptr = np.concatenate([[0], np.cumsum(data["per_sample"])])
        return leaf_weights(indptr, data["tag_leaf"][data["tags"]], n_leaves)

    A = timer("grounding (tags -> leaves -> A)", ground)
    quality = rank_normalize(data["scores"])
    problem = timer("path matrix U = diag(q) A Omega", build_problem, A, quality, data["parents"], data["levels"])
    target_counts = np.bincount(data["tag_leaf"][data["target_tags"]][data["tag_leaf"][data["target_tags"]] >= 0], minlength=n_leaves)
    target = target_distribution(target_counts, alpha=0.5)
    selections = {mode: timer(f"select {MODES[mode][0]} ({size.picks:,} picks)", select, problem, size.picks, MODES[mode][1], target) for mode in modes}

    print(
        f"\n{args.size}: {problem.n_samples:,} samples, {problem.n_nodes:,} nodes ({n_leaves:,} leaves, "
        f"depth {int(data['levels'].max())} with the root), nnz(A) {A.nnz:,}, nnz(U) {problem.paths.nnz:,}, "
        f"{size.picks:,} picks"
    )
    timer.report()
    for mode, selection in selections.items():
        coverage = coverage_by_level(selection.coverage, problem.levels)
        print(
            f"  {mode:<9} E(S) {selection.objective[-1]:12.1f}  KL(t||p_S) {selection.kl[-1]:.3f}  "
            f"leaf entropy {leaf_entropy(selection.leaf_mass):.2f}  leaf coverage {coverage[1]:.2f}  "
            f"evaluations/pick {(selection.gain_evaluations - problem.n_samples) / size.picks:.1f}  "
            f"{ {k: v for k, v in selection.info.items() if np.isscalar(v)} }"
        )

    if not args.skip_baselines:
        print("\nbaselines (same process)")
        small = build_problem(A[:20_000], quality[:20_000], data["parents"], data["levels"])
        started = time.perf_counter()
        lazy_order = select(small, 100, TagsParams(align="penalty"), target).order
        lazy_s = time.perf_counter() - started
        started = time.perf_counter()
        dense_order = select_dense(small, 100, TagsParams(align="penalty"), target)
        dense_s = time.perf_counter() - started
        print(
            f"  dense greedy, 20,000 samples x 100 picks (penalty): {dense_s:.2f} s; lazy: {lazy_s:.3f} s; "
            f"ratio {dense_s / lazy_s:.0f}x; identical order: {bool((lazy_order == dense_order).all())}"
        )
        started = time.perf_counter()
        mig_selection = mig.select(problem.paths, size.picks, mig_problem.MigParams(gain="exact"))
        mig_s = time.perf_counter() - started
        if "none" in selections:
            unaligned_s = next(s for name, s, *_ in timer.phases if name.startswith("select unaligned"))
            print(
                f"  MIG lazy select (exact gain) on the same U: {mig_s:.2f} s; TAGS unaligned {unaligned_s:.2f} s; "
                f"ratio TAGS/MIG {unaligned_s / mig_s:.2f}; same picks in the first 1,000: "
                f"{bool((mig_selection.order[:1000] == selections['none'].order[:1000]).all())}"
            )
        else:
            print(f"  MIG lazy select (exact gain) on the same U: {mig_s:.2f} s")
        print(f"  peak RSS so far {peak_rss_mib():,.0f} MiB")

    if not args.skip_tree:
        embeddings = clustered_embeddings(size.tree_tags, args.seed)
        names = [f"tag {i}" for i in range(size.tree_tags)]
        counts = np.random.default_rng(args.seed).zipf(1.6, size=size.tree_tags).clip(max=10**6)
        for label, tag_counts in (("no counts", None), ("Zipf counts, min_count 2", counts)):
            started = time.perf_counter()
            tree = build_tree(names, embeddings, tag_counts, seed=args.seed)
            seconds = time.perf_counter() - started
            per_level = np.bincount(tree.levels)[1:].tolist()
            print(
                f"\ntree build, {size.tree_tags:,} tags x 384 dims ({label}): {seconds:.1f} s; nodes per level "
                f"{per_level}; peak RSS so far {peak_rss_mib():,.0f} MiB"
            )


if __name__ == "__main__":
    main()
