"""Token budgets under constraints and warm starts: how many greedy runs the fit takes, and its cost.

    python benchmarks/bench_token_steering.py [--pool 50000] [--token-budgets 100000 500000] [--seed 0]

The synthetic MIG pool of ``benchmarks/bench_stability.py`` (Zipf labels, clustered label
embeddings, Deita-like weights) with lognormal token estimates (median ~250), five shards of which
the cheapest-token one is capped at 20% (the others at 40%), 20 pinned samples and a minimum of
picks on two mid-popular labels. For each token budget: the fit (``fit_token_budget``, what
``run_selection`` does) against one constrained greedy run at the count it ends on (the baseline,
in the same process): the runs it took, the picks kept, the tokens, the times and their ratio;
then the same for a warm re-selection after 5% growth (the previous version fitted the same
way on the pool before it grew). Peak RSS at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_stability import N_LABELS, label_embeddings, peak_rss_mib, synthetic_labels  # noqa: E402
from mig_assets.core.mig.constrained import select_constrained, warm_select  # noqa: E402
from mig_assets.core.mig.problem import MigParams, build_problem  # noqa: E402
from mig_assets.core.selection.budget import fit_token_budget  # noqa: E402
from mig_assets.core.selection.constraints import Constraints, violations  # noqa: E402
from mig_assets.core.selection.stability import StabilitySpec, previous_first, warm_token_picks  # noqa: E402


def constraints_for(rng: np.random.Generator, indptr: np.ndarray, ids: np.ndarray, tokens: np.ndarray, n_old: int) -> Constraints:
    n = len(tokens)
    shard = rng.integers(5, size=n)
    shard[tokens < np.quantile(tokens, 0.2)] = 0  # shard 0 holds the short samples: the cap binds under a token budget
    owner = np.repeat(np.arange(n), np.diff(indptr))
    bounded = [100, 300]  # mid-popular labels
    carries = sp.csr_array(
        (np.ones(int(np.isin(ids, bounded).sum()), np.int64), (owner[np.isin(ids, bounded)], np.searchsorted(bounded, ids[np.isin(ids, bounded)]))),
        shape=(n, 2),
    )
    return Constraints(
        n,
        pinned=rng.choice(n_old, 20, replace=False),  # pinned before the pool grew: the same spec both times
        group_ids=shard,
        group_share=np.array([0.2, 0.4, 0.4, 0.4, 0.4]),
        group_by="shard",
        label_members=carries,
        label_min=np.array([15, 15]),
        label_names=("label 100", "label 300"),
    )


def timed(run):
    started = time.perf_counter()
    result = run()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=50_000)
    parser.add_argument("--token-budgets", type=int, nargs="+", default=[100_000, 500_000])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    n_new = args.pool // 20
    indptr, ids, scores = synthetic_labels(rng, args.pool + n_new)
    vectors = label_embeddings(rng)
    problem = build_problem(indptr, ids, [f"label {j:05d}" for j in range(N_LABELS)], scores, lambda labels: vectors[[int(x[6:]) for x in labels]])
    Y, params = problem.propagated, MigParams()
    tokens = np.maximum(1, rng.lognormal(np.log(250), 0.8, len(scores))).astype(np.int64)
    c = constraints_for(rng, indptr, ids, tokens, args.pool)
    print(f"pool {args.pool:,} + {n_new:,} new samples, {N_LABELS:,} labels, median tokens {int(np.median(tokens))}")
    for budget in args.token_budgets:
        counts: list[int] = []

        def run_at(k: int):
            counts.append(k)
            return select_constrained(Y, k, c, params)

        fitted, fit_seconds = timed(lambda: fit_token_budget(run_at, lambda run: run.order, tokens, budget, c))
        m = len(fitted.order)
        _, one_seconds = timed(lambda: select_constrained(Y, m, c, params))
        assert tokens[fitted.order].sum() <= budget and not violations(c, fitted.order, m)
        print(
            f"constrained, {budget:>9,} tokens: {len(counts)} runs at counts {counts}; kept {m:,} picks, {int(tokens[fitted.order].sum()):,} tokens; "
            f"fit {fit_seconds:.2f}s vs one run at {m:,} {one_seconds:.2f}s (ratio {fit_seconds / max(one_seconds, 1e-9):.1f})"
        )
        old = before_growth(c, args.pool)  # the previous version: the same spec fitted on the pool before it grew
        previous = fit_token_budget(lambda k: select_constrained(Y[: args.pool], k, old, params), lambda run: run.order, tokens[: args.pool], budget, old).order
        spec, warm_counts = StabilitySpec("warm", 0.05, 0.1), []

        def warm_at(k: int):
            warm_counts.append(k)
            return warm_select(Y, k, previous, np.arange(args.pool, len(tokens)), spec, c, params)

        start = warm_token_picks(c, previous, tokens, budget)  # what run_selection starts a warm fit from
        (warm, _, report), warm_seconds = timed(lambda: fit_token_budget(warm_at, lambda run: previous_first(run[0].order, previous), tokens, budget, c, start))
        w = len(warm.order)
        _, one_warm = timed(lambda: warm_select(Y, w, previous, np.arange(args.pool, len(tokens)), spec, c, params))
        print(
            f"warm,        {budget:>9,} tokens: {len(warm_counts)} runs at counts {warm_counts}; kept {w:,} picks, removed {report['selection']['removed']}, "
            f"added new {report['selection']['added_new_samples']}, old {report['selection']['added_old_samples']}; "
            f"fit {warm_seconds:.2f}s vs one warm run at {w:,} {one_warm:.2f}s (ratio {warm_seconds / max(one_warm, 1e-9):.1f})"
            + (f"; fell back to the fresh greedy: {report['fallback'][:90]}..." if report.get("fallback") else "")
        )
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


def before_growth(c: Constraints, n: int) -> Constraints:
    """The constraints over the first n rows (the pool before it grew): pins among them, groups and labels cut."""
    return Constraints(
        n,
        pinned=c.pinned[c.pinned < n],
        group_ids=c.group_ids[:n] if c.group_ids is not None else None,
        group_share=c.group_share,
        group_by=c.group_by,
        label_members=c.label_members[:n] if c.label_members is not None else None,
        label_min=c.label_min,
        label_names=c.label_names,
    )


if __name__ == "__main__":
    main()
