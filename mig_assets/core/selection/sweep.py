"""What-if sweep: one spec over a grid of budgets and parameters, measured on common yardsticks.

MIG runs once per ``phi_b`` (TAGS once per ``lam``) at the largest budget; every smaller budget is a prefix of that greedy
order (the unconstrained greedy is prefix-consistent), so a grid of B budgets × P values costs P
greedy runs. Each point reports, against the tokens it selects: the objective E(S) under the
spec's own parameters (so points of different ``phi_b`` are compared on one scale), the share of
labels (TAGS: leaves) covered, the mean quality weight, and (TAGS with a target) KL(target || S);
and under ``rows`` the pool rows it picks, in greedy order.
:func:`pareto_flags` marks, per metric, the points no cheaper-or-equal point beats.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from mig_assets.core.mig.algorithm import select
from mig_assets.core.mig.problem import MigParams, phi
from mig_assets.core.selection.budget import picks_for_tokens, resolve_count, token_prefix

METRICS = {"objective": True, "coverage": True, "mean_quality": True, "kl": False}  # metric -> higher is better


@dataclass(frozen=True)
class SweepGrid:
    budgets: tuple[dict, ...]  # each {"count": n}, {"fraction": f} or {"tokens": t}
    phi_b: tuple[float, ...] = ()  # MIG; empty: the spec's own
    lam: tuple[float, ...] = ()  # aligned TAGS; empty: the spec's own

    def __post_init__(self) -> None:
        if not self.budgets:
            raise ValueError("a sweep needs at least one budget")
        for budget in self.budgets:
            if not isinstance(budget, dict) or len(budget) != 1 or next(iter(budget)) not in ("count", "fraction", "tokens"):
                raise ValueError(f"sweep budget {budget!r}: expected exactly one of count, fraction, tokens")


def budget_picks(order: np.ndarray, tokens: np.ndarray, budget: dict) -> int:
    """How many picks of the greedy ``order`` a budget keeps (a token budget: the longest fitting prefix)."""
    ((kind, value),) = budget.items()
    if kind == "tokens":
        return len(token_prefix(order, tokens, int(value)))
    return min(resolve_count(len(tokens), **{kind: value}), len(order))


def largest_picks(n_pool: int, tokens: np.ndarray, budgets: tuple[dict, ...]) -> int:
    """Picks the largest budget of the grid can need (a token budget: the cheapest samples that fit)."""
    needs = [picks_for_tokens(tokens, int(v)) if kind == "tokens" else resolve_count(n_pool, **{kind: v}) for b in budgets for kind, v in b.items()]
    return max(needs)


def prefix_points(order: np.ndarray, Y, scores: np.ndarray, tokens: np.ndarray, params: MigParams, budgets: tuple[dict, ...], point: dict) -> list[dict]:
    """One point per budget for the prefixes of a greedy ``order`` over Y: E under ``params``, label coverage, mean quality."""
    points = []
    for budget in budgets:
        k = budget_picks(order, tokens, budget)
        picked = order[:k]
        coverage = np.asarray(Y[picked].sum(axis=0), np.float64).ravel() if k else np.zeros(Y.shape[1])
        points.append(
            point
            | {
                "budget": ", ".join(f"{kind}={value}" for kind, value in budget.items()),
                "picks": k,
                "tokens": int(tokens[picked].sum()),
                "objective": float(phi(coverage, params).sum()),
                "coverage": float((coverage > 0).mean()) if len(coverage) else 0.0,
                "mean_quality": float(scores[picked].mean()) if k else 0.0,
                "rows": picked,  # the pool rows picked, in order (a view of the greedy order)
            }
        )
    return points


def sweep_mig(Y, scores: np.ndarray, tokens: np.ndarray, grid: SweepGrid, params: MigParams = MigParams()) -> list[dict]:
    """MIG over ``grid.budgets`` × ``grid.phi_b`` on one propagated matrix Y (built once by the caller)."""
    k = largest_picks(Y.shape[0], tokens, grid.budgets)
    points = []
    for phi_b in grid.phi_b or (params.phi_b,):
        order = select(Y, k, dataclasses.replace(params, phi_b=phi_b)).order
        points += prefix_points(order, Y, scores, tokens, params, grid.budgets, {"method": "mig", "phi_b": phi_b})
    return pareto_flags(points)


def pareto_flags(points: list[dict]) -> list[dict]:
    """Mark ``frontier_<metric>``: no point with at most its tokens is at least as good and strictly
    better in tokens or the metric (higher is better, lower for KL)."""
    for metric, higher in METRICS.items():
        present = [p for p in points if p.get(metric) is not None]
        for p in present:
            value = p[metric] if higher else -p[metric]

            def beats(q, p=p, value=value) -> bool:
                other = q[metric] if higher else -q[metric]
                return q is not p and q["tokens"] <= p["tokens"] and other >= value and (q["tokens"] < p["tokens"] or other > value)

            p[f"frontier_{metric}"] = not any(beats(q) for q in present)
    return points


def sweep_tags(problem, scores: np.ndarray, tokens: np.ndarray, grid: SweepGrid, params, target=None) -> list[dict]:
    """TAGS over ``grid.budgets`` × ``grid.lam`` (aligned by ``params.align`` to ``target``) on one
    problem (built once by the caller). Objective: the information E(S) of the tree (the same φ for
    every λ), coverage: the share of leaves reached, KL(target || S) when there is a target."""
    from mig_assets.core.tags.information import kl_divergence
    from mig_assets.core.tags.modes import select as tags_select

    k = largest_picks(problem.n_samples, tokens, grid.budgets)
    points = []
    for lam in grid.lam or (params.lam,):
        run = tags_select(problem, k, dataclasses.replace(params, lam=lam), target)
        for budget in grid.budgets:
            n = budget_picks(run.order, tokens, budget)
            picked = run.order[:n]
            leaf_mass = np.asarray(problem.leaves[picked].sum(axis=0)).ravel() if n else np.zeros(problem.n_leaves)
            points.append(
                {
                    "method": f"tags ({params.align})",
                    "lam": lam,
                    "budget": ", ".join(f"{kind}={value}" for kind, value in budget.items()),
                    "picks": n,
                    "tokens": int(tokens[picked].sum()),
                    "objective": float(run.objective[n - 1]) if n else 0.0,
                    "coverage": float((leaf_mass > 0).mean()) if len(leaf_mass) else 0.0,
                    "mean_quality": float(scores[picked].mean()) if n else 0.0,
                    "kl": kl_divergence(target, leaf_mass, params.eps) if target is not None else None,
                    "rows": picked,  # the pool rows picked, in order (a view of the greedy order)
                }
            )
    return pareto_flags(points)
