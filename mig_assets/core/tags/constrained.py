"""TAGS's greedy under constraints (``core/selection/constraints.py``): pins, bans, group caps, leaf bounds.

As for MIG (``core/mig/constrained.py``), every pick is the best *admissible* row by the mode's own
score, ties to the lowest row: pinned rows first, greedily among themselves; rows a pick retires
(its group or one of its leaves at the cap) leave the lazy frontiers for good; when no slack is left
for the leaf minimums, the best admissible row carrying an owed leaf. Modes ``none`` (gain) and
``penalty`` (gain/E(pool) − λ·ΔKL, one frontier per row mass) run lazily here; ``hard`` and
``quota`` keep their own per-pick feasibility rule beside the constraints
(``core/tags/constrained_rules.py``). In aligned modes rows without a grounded tag come after the
grounded ones, in row order, as in the unconstrained greedy.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mig_assets.core.selection.constraints import Constraints, ConstraintState, admissible_rows
from mig_assets.core.selection.stability import StabilitySpec, WarmResult, churn_report, warm_reselect
from mig_assets.core.tags.constrained_rules import select_dense_with_rule, select_with_rule
from mig_assets.core.tags.greedy import GreedyRun, finish_selection
from mig_assets.core.tags.information import Scorer
from mig_assets.core.tags.lazy import Frontier, groups_by_value
from mig_assets.core.tags.modes import select
from mig_assets.core.tags.params import TagsParams, TagsSelection
from mig_assets.core.tags.problem import TagsProblem
from mig_assets.core.tags.warm_rules import selection_objective, swap_terms

RULE_MODES = ("hard", "quota")  # modes with their own per-pick feasibility rule


def _checked_run(problem: TagsProblem, k: int, constraints: Constraints, params: TagsParams, target) -> GreedyRun:
    run = GreedyRun(problem, k, params, target)
    if constraints.n_samples != run.N:
        raise ValueError(f"the constraints are over {constraints.n_samples} rows but the TAGS problem has {run.N}")
    return run


def _scoring(run: GreedyRun) -> tuple[Scorer, np.ndarray]:
    """Modes none and penalty: the row scorer and the rows it ranks (aligned: grounded ones; the rest come last)."""
    scorer = Scorer((run.U, run.node_terms)) if run.align == "none" else Scorer(*run.score_parts)
    ranked = np.zeros(run.N, bool)
    ranked[run.grounded if run.align == "penalty" else np.arange(run.N)] = True
    return scorer, ranked


def _fresh(run: GreedyRun, scorer: Scorer, rows: np.ndarray) -> np.ndarray:
    """The mode's score of ``rows`` now: the gain (none), or gain/E(pool) − λ·ΔKL (penalty)."""
    values = scorer(rows)
    return values if run.align == "none" else values - run.shifts(rows)


def select_constrained(
    problem: TagsProblem,
    k: int,
    constraints: Constraints,
    params: TagsParams = TagsParams(),
    target=None,
    *,
    n_top_nodes: int = 3,
    check_pins: bool = True,
) -> TagsSelection:
    """Lazy greedy TAGS selection of k rows under ``constraints`` (see the module notes). Hard and
    quota modes refuse pins that break their rule unless ``check_pins`` is off (a warm start's previous picks)."""
    run = _checked_run(problem, k, constraints, params, target)
    if run.align in RULE_MODES:
        return select_with_rule(run, constraints, n_top_nodes, check_pins)
    scorer, ranked = _scoring(run)
    state = ConstraintState(constraints, run.k)
    order, scores = np.empty(run.k, dtype=np.int64), np.empty(run.k)
    pending = list(constraints.pinned.tolist())
    for pick in range(len(pending)):  # the pinned rows, greedily among themselves
        values = _fresh(run, scorer, np.asarray(pending, np.int64))
        best = int(np.argmax(values))
        order[pick], scores[pick] = pending.pop(best), values[best]
        run.add(int(order[pick]))
        state.admit(int(order[pick]))
    candidates = np.flatnonzero(ranked)
    masses, group_rows = groups_by_value(run.mass_key, candidates) if run.align == "penalty" else (np.zeros(1), [candidates])
    initial = scorer(candidates)
    position = np.empty(run.N, dtype=np.int64)
    position[candidates] = np.arange(len(candidates))
    frontiers = [Frontier(rows, initial[position[rows]], scorer) for rows in group_rows]
    for frontier in frontiers:
        frontier.retire(np.flatnonzero(~state.alive))
    for pick in range(len(constraints.pinned), run.k):
        if state.needs_owed_label():
            owed = state.owed_label_rows()
            scored = owed[ranked[owed]]
            if len(scored):
                values = _fresh(run, scorer, scored)
                best = int(np.argmax(values))  # the first maximum: the lowest row
                row, score = int(scored[best]), float(values[best])
            elif len(owed):
                row, score = int(owed[0]), 0.0
            else:
                raise state.stuck(pick, run.k)
        else:
            score, row = -np.inf, -1
            for g, frontier in enumerate(frontiers):
                s, r = frontier.best(pick, 0.0 if run.align == "none" else run.shift(float(masses[g])))
                if r >= 0 and (s > score or (s == score and r < row)):
                    score, row = s, r
            if row < 0:  # no scored row left: the unscored (ungrounded) ones, in row order
                rest = np.flatnonzero(state.alive & ~ranked)
                if not len(rest):
                    raise state.stuck(pick, run.k)
                row, score = int(rest[0]), 0.0
        order[pick], scores[pick] = row, score
        run.add(row)
        retired = state.admit(row)
        for frontier in frontiers:
            frontier.retire(retired)
    return finish_selection(run, order, scores, scorer.evaluations, {"constrained": True}, n_top_nodes)


def select_dense_constrained(problem: TagsProblem, k: int, constraints: Constraints, params: TagsParams = TagsParams(), target=None) -> np.ndarray:
    """The reference for :func:`select_constrained`: every admissible row's score recomputed at every
    pick, the admissible rows recomputed from scratch (``admissible_rows``). Returns the picks in order."""
    run = _checked_run(problem, k, constraints, params, target)
    if run.align in RULE_MODES:
        return select_dense_with_rule(run, constraints)
    scorer, ranked = _scoring(run)
    constraints.validate(run.k)
    order: list[int] = []
    for _ in range(run.k):
        admissible = admissible_rows(constraints, np.asarray(order, np.int64), run.k)
        rows = np.flatnonzero(admissible)
        pinned_phase = len(np.setdiff1d(constraints.pinned, order)) > 0
        scored = rows if pinned_phase else rows[ranked[rows]]
        if len(scored):
            row = int(scored[int(np.argmax(_fresh(run, scorer, scored)))])
        elif len(rows):
            row = int(rows[0])
        else:
            raise ValueError(f"no admissible row at pick {len(order) + 1} of {run.k}")
        order.append(row)
        run.add(row)
    return np.asarray(order, np.int64)


def warm_select(
    problem: TagsProblem,
    k: int,
    previous_rows: np.ndarray,
    new_rows: np.ndarray,
    stability: StabilitySpec,
    constraints: Constraints | None = None,
    params: TagsParams = TagsParams(),
    target=None,
) -> tuple[TagsSelection, WarmResult, dict]:
    """TAGS re-selection warm-started from ``previous_rows`` (``core/selection/stability.py``): fills by
    :func:`select_constrained` (the previous picks pinned, entering even where they break the hard or
    quota rule), swaps judged by the objective the align mode's greedy maximises and kept within its
    rule (``core/tags/warm_rules.py``: E(S); penalty E(S)/E(pool) − λ·KL); the set is then ordered by
    the TAGS greedy among its own rows. Also returns how the set was reached and the churn report
    against a fresh greedy under the same constraints, on that objective."""
    constraints = constraints if constraints is not None else Constraints(problem.n_samples)
    run = _checked_run(problem, k, constraints, params, target)
    objective, rule = swap_terms(run, constraints)

    def fill(c: Constraints) -> np.ndarray:
        return select_constrained(problem, k, c, params, target, check_pins=False).order

    warm = warm_reselect(run.k, previous_rows, new_rows, constraints, stability, fill, objective, rule)
    members = TagsProblem(problem.paths[warm.rows], problem.leaves[warm.rows], problem.node_weights, problem.levels)
    within = select(members, len(warm.rows), params, target)
    ordered = dataclasses.replace(within, order=warm.rows[within.order])
    fresh = select_constrained(problem, k, constraints, params, target) if constraints.active else select(problem, k, params, target)
    report = churn_report(previous_rows, new_rows, ordered.order, fresh.order, selection_objective(run, ordered), selection_objective(run, fresh))
    report |= {"swaps": len(warm.swaps), "filled": len(warm.filled), "max_churn": stability.max_churn, "margin": stability.margin}
    if run.target is not None and ordered.kl is not None and fresh.kl is not None and len(fresh.kl):
        report |= {
            "information": float(ordered.objective[-1]),
            "fresh_information": float(fresh.objective[-1]),
            "kl": float(ordered.kl[-1]),
            "fresh_kl": float(fresh.kl[-1]),
        }
    if warm.fallback:
        report["fallback"] = warm.fallback
    return ordered, warm, report
