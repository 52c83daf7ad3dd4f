"""Churn on re-selection after the pool grows, with and without the warm start (``stability: warm``).

    python benchmarks/bench_stability.py [--pool 50000] [--growth 0.05] [--budgets 500 2500] [--seed 0]
                                         [--max-churn 0.05] [--margin 0.1] [--lam 1.0]

A seeded synthetic pool (Zipf label popularity, 1-7 labels per sample, clustered label embeddings
as in ``benchmarks/mig_synthetic.py``, Deita-like weights; for TAGS the same labels are the leaves of
``bench_tags``' synthetic 4-level tree, unaligned and aligned by ``align: penalty`` with ``--lam`` to a
target drawn from a flatter popularity than the pool's) is selected at each budget; then
``--growth`` of new samples from the same distribution join it and the selection is re-run fresh
and warm. Reported per method and budget: previous picks removed, picks added from the new samples,
old samples displaced by old samples (the cascade: an old sample added in place of a previous pick,
target <= 1% of the budget), the objective against the fresh greedy's (target within 0.5%; aligned
TAGS: the greedy's own objective E(S)/E(pool) - lam*KL, and both KLs), the
times (warm / fresh ratio, both in this process) and the peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_tags import synthetic_tree  # noqa: E402
from mig_assets.core.mig.algorithm import select
from mig_assets.core.mig.constrained import warm_select  # noqa: E402
from mig_assets.core.mig.problem import MigParams, build_problem  # noqa: E402
from mig_assets.core.selection.stability import StabilitySpec  # noqa: E402
from mig_assets.core.tags.constrained import warm_select as tags_warm_select  # noqa: E402
from mig_assets.core.tags.modes import select as tags_select  # noqa: E402
from mig_assets.core.tags.params import TagsParams  # noqa: E402
from mig_assets.core.tags.problem import TagsProblem, leaf_weights, target_distribution  # noqa: E402
from mig_assets.core.tags.problem import build_problem as build_tags_problem  # noqa: E402

N_LABELS = 2000
EMBEDDING_DIM = 64


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_labels(rng: np.random.Generator, n_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR offsets and label ids (Zipf 0.9 popularity, 1-7 labels each), and Deita-like weights."""
    popularity = 1.0 / np.arange(1, N_LABELS + 1) ** 0.9
    popularity /= popularity.sum()
    counts = rng.integers(1, 8, size=n_samples)
    ids = rng.choice(N_LABELS, size=int(counts.sum()), p=popularity)
    scores = rng.uniform(1, 6, n_samples) * rng.uniform(1, 5, n_samples)
    return np.concatenate([[0], np.cumsum(counts)]), ids, scores


def label_embeddings(rng: np.random.Generator) -> np.ndarray:
    centres = rng.normal(size=(N_LABELS // 5, EMBEDDING_DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = centres[rng.integers(len(centres), size=N_LABELS)] + rng.normal(size=(N_LABELS, EMBEDDING_DIM)) * (0.28 / np.sqrt(EMBEDDING_DIM))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def mig_runs(Y, n_old: int, k: int, stability: StabilitySpec) -> dict:
    """The previous version (a fresh greedy on the old pool), then the re-selection fresh and warm."""
    params = MigParams()
    previous = select(Y[:n_old], k, params).order
    new_rows = np.arange(n_old, Y.shape[0])
    started = time.perf_counter()
    select(Y, k, params)
    fresh_seconds = time.perf_counter() - started
    started = time.perf_counter()
    _, _, report = warm_select(Y, k, previous, new_rows, stability, None, params)  # includes its own fresh run, for the report
    warm_seconds = time.perf_counter() - started - fresh_seconds
    return report | {"fresh_seconds": fresh_seconds, "warm_seconds": warm_seconds}


def tags_problem(rng: np.random.Generator, indptr: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> TagsProblem:
    """A TAGS problem over the same samples: their labels as leaves of a synthetic 4-level tree."""
    parents, levels = synthetic_tree(rng, N_LABELS)
    return build_tags_problem(leaf_weights(indptr, ids, N_LABELS), scores, parents, levels)


def tags_runs(problem: TagsProblem, n_old: int, k: int, stability: StabilitySpec, params: TagsParams = TagsParams(), target=None) -> dict:
    """As :func:`mig_runs`, for TAGS (unaligned, or aligned by ``params`` to ``target``)."""
    old = TagsProblem(problem.paths[:n_old], problem.leaves[:n_old], problem.node_weights, problem.levels)
    previous = tags_select(old, k, params, target).order
    new_rows = np.arange(n_old, problem.n_samples)
    started = time.perf_counter()
    tags_select(problem, k, params, target)
    fresh_seconds = time.perf_counter() - started
    started = time.perf_counter()
    _, _, report = tags_warm_select(problem, k, previous, new_rows, stability, None, params, target)
    warm_seconds = time.perf_counter() - started - fresh_seconds
    return report | {"fresh_seconds": fresh_seconds, "warm_seconds": warm_seconds}


def flatter_target(rng: np.random.Generator) -> np.ndarray:
    """A target over the leaves from 20,000 draws of a Zipf 0.45 popularity (the pool's is 0.9)."""
    popularity = 1.0 / np.arange(1, N_LABELS + 1) ** 0.45
    draws = rng.choice(N_LABELS, size=20_000, p=popularity / popularity.sum())
    return target_distribution(np.bincount(draws, minlength=N_LABELS), alpha=0.5)


def print_row(method: str, k: int, report: dict) -> None:
    for mode, moves in (("fresh", report["fresh_greedy"]), ("warm", report["selection"])):
        displaced = moves["added_old_samples"]
        print(
            f"{method:5s} k={k:5d} {mode:5s}: removed {moves['removed']:4d}, added new {moves['added_new_samples']:4d}, "
            f"old displaced by old {displaced:4d} ({displaced / k:6.2%} of budget)"
        )
    print(
        f"{method:5s} k={k:5d} objective warm {report['objective']:.4f} vs fresh {report['fresh_objective']:.4f}: "
        f"lost {report['objective_loss_vs_fresh']:.3%}; time warm {report['warm_seconds']:.2f}s, fresh {report['fresh_seconds']:.2f}s "
        f"(ratio {report['warm_seconds'] / max(report['fresh_seconds'], 1e-9):.2f}); {report['swaps']} swaps"
    )
    if "kl" in report:
        print(f"{method:5s} k={k:5d} KL(t || p_S) warm {report['kl']:.4f} vs fresh {report['fresh_kl']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=50_000)
    parser.add_argument("--growth", type=float, default=0.05)
    parser.add_argument("--budgets", type=int, nargs="+", default=[500, 2500])
    parser.add_argument("--max-churn", type=float, default=0.05)
    parser.add_argument("--margin", type=float, default=0.1)
    parser.add_argument("--lam", type=float, default=1.0, help="aligned TAGS (penalty): lambda of E/E(pool) - lam*KL")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    n_new = int(round(args.pool * args.growth))
    indptr, ids, scores = synthetic_labels(rng, args.pool + n_new)
    vectors = label_embeddings(rng)
    started = time.perf_counter()
    problem = build_problem(indptr, ids, [f"label {j:05d}" for j in range(N_LABELS)], scores, lambda labels: vectors[[int(x[6:]) for x in labels]])
    print(f"pool {args.pool:,} + {n_new:,} new samples, {len(problem.labels):,} labels; problem built in {time.perf_counter() - started:.1f}s")
    stability = StabilitySpec("warm", args.max_churn, args.margin)
    print(f"warm start: max_churn {stability.max_churn}, margin {stability.margin}")
    tags = tags_problem(rng, indptr, ids, scores)
    for k in args.budgets:
        print_row("mig", k, mig_runs(problem.propagated, args.pool, k, stability))
    for k in args.budgets:
        print_row("tags", k, tags_runs(tags, args.pool, k, stability))
    target, penalty = flatter_target(rng), TagsParams(align="penalty", lam=args.lam)
    for k in args.budgets:
        print_row("tagsP", k, tags_runs(tags, args.pool, k, stability, penalty, target))
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
