"""MIG's greedy under constraints (``core/selection/constraints.py``): pins, bans, group caps, label bounds.

The constraints act inside the greedy: every pick is the row of largest gain among the rows the
constraints still admit (ties to the lowest row), so a cap that binds makes the greedy take the best
feasible candidate instead of dropping picks afterwards. Pinned rows enter first, in greedy order
among themselves (each with its gain when it entered), and count in the budget and the objective.
"""

from __future__ import annotations

import numpy as np

from mig_assets.core.mig.algorithm import GAIN_MODELS, LazyFrontier, MigSelection, gain_of_row, gains_of, replay, select
from mig_assets.core.mig.problem import MigParams, phi, phi_prime, propagated_matrix
from mig_assets.core.selection.constraints import Constraints, ConstraintState, admissible_rows
from mig_assets.core.selection.stability import SeparableObjective, StabilitySpec, WarmResult, churn_report, warm_reselect
from mig_assets.core.validation import check_budget


def select_constrained(Y, k: int, constraints: Constraints, params: MigParams = MigParams(), *, n_top_labels: int = 3) -> MigSelection:
    """Lazy greedy MIG selection of k rows of Y under ``constraints`` (same gains and ties as :func:`select`).

    Retired rows (picked, banned, capped) leave the lazy frontier for good; when no slack is left for
    the label minimums, the pick is the best of the admissible rows carrying an owed label, whose
    gains are evaluated afresh. Raises InfeasibleConstraints before selecting when the constraints
    cannot hold, or naming the pick at which no admissible row is left.
    """
    Y = propagated_matrix(Y)
    n_samples, n_labels = Y.shape
    k = check_budget(n_samples, k)
    if constraints.n_samples != n_samples:
        raise ValueError(f"the constraints are over {constraints.n_samples} rows but Y has {n_samples}")
    state = ConstraintState(constraints, k)
    model = GAIN_MODELS[params.gain](n_labels, params)
    order, gains = np.empty(k, dtype=np.int64), np.empty(k, dtype=np.float64)
    evaluations = 0

    def take(pick: int, row: int, gain: float) -> np.ndarray:
        order[pick] = row
        gains[pick] = gain
        entries = slice(Y.indptr[row], Y.indptr[row + 1])
        model.add(Y.indices[entries], Y.data[entries])
        return state.admit(row)

    pinned = constraints.pinned
    if len(pinned):  # the pinned rows, greedily among themselves
        pins = LazyFrontier(gains_of(Y, model, pinned), lambda idx: gains_of(Y, model, pinned[idx]), lambda idx: gain_of_row(Y, model, int(pinned[idx])))
        for pick in range(len(pinned)):
            index, gain = pins.pop_best(pick)
            take(pick, int(pinned[index]), gain)
        evaluations += pins.evaluations
    frontier = LazyFrontier(gains_of(Y, model), lambda rows: gains_of(Y, model, rows), lambda row: gain_of_row(Y, model, row))
    frontier.discard(np.flatnonzero(~state.alive))
    for pick in range(len(pinned), k):
        step = pick - len(pinned)  # the frontier's clock: a key stamped with it is exact now
        if state.needs_owed_label():
            candidates = state.owed_label_rows()
            if not len(candidates):
                raise state.stuck(pick, k)
            candidate_gains = gains_of(Y, model, candidates)
            evaluations += len(candidates)
            best = int(np.argmax(candidate_gains))  # the first maximum: ties to the lowest row
            row, gain = int(candidates[best]), float(candidate_gains[best])
        else:
            row, gain = frontier.pop_best(step)
            if row < 0:
                raise state.stuck(pick, k)
        frontier.discard(take(pick, row, gain))
    objective, top_labels = replay(Y, order, model, n_top_labels)
    return MigSelection(order, gains, objective, model.coverage.copy(), top_labels, evaluations + frontier.evaluations)


def select_dense_constrained(Y, k: int, constraints: Constraints, params: MigParams = MigParams()) -> np.ndarray:
    """The straightforward greedy under constraints, a baseline to verify :func:`select_constrained`:
    every step recomputes all gains (float64) and the admissible rows from scratch, then takes the
    first maximum. Needs N×L memory. Returns the picked rows, in order."""
    dense = propagated_matrix(Y).toarray().astype(np.float64)
    n_samples, n_labels = dense.shape
    k = check_budget(n_samples, k)
    constraints.validate(k)
    coverage = np.zeros(n_labels, dtype=np.float32 if params.gain == "gradient" else np.float64)
    order: list[int] = []
    for _ in range(k):
        if params.gain == "gradient":
            gains = dense @ phi_prime(coverage, params).astype(np.float64)
        else:
            gains = (phi(coverage + dense, params) - phi(coverage, params)).sum(axis=1)
        gains[~admissible_rows(constraints, np.asarray(order, np.int64), k)] = -np.inf
        row = int(np.argmax(gains))
        if gains[row] == -np.inf:
            raise ValueError(f"no admissible row at pick {len(order) + 1} of {k}")
        order.append(row)
        coverage += dense[row].astype(coverage.dtype)
    return np.asarray(order, np.int64)


def warm_select(
    Y,
    k: int,
    previous_rows: np.ndarray,
    new_rows: np.ndarray,
    stability: StabilitySpec,
    constraints: Constraints | None = None,
    params: MigParams = MigParams(),
    *,
    n_top_labels: int = 3,
) -> tuple[MigSelection, WarmResult, dict]:
    """MIG re-selection warm-started from ``previous_rows`` (``core/selection/stability.py``).

    The set is ordered by the greedy among its own rows, so ranks, gains at pick time and the
    objective curve mean what they mean for a fresh selection. Also returns how the set was reached
    and the churn report against a fresh greedy under the same constraints.
    """
    Y = propagated_matrix(Y)
    constraints = constraints if constraints is not None else Constraints(Y.shape[0])
    information = SeparableObjective([(Y, lambda x: phi(x, params), None)])
    warm = warm_reselect(k, previous_rows, new_rows, constraints, stability, lambda c: select_constrained(Y, k, c, params).order, information)
    within = select(Y[warm.rows], len(warm.rows), params, n_top_labels=n_top_labels)
    ordered = MigSelection(warm.rows[within.order], within.gains, within.objective, within.coverage, within.top_labels, within.gain_evaluations)
    fresh = select_constrained(Y, k, constraints, params) if constraints.active else select(Y, k, params)
    report = churn_report(previous_rows, new_rows, ordered.order, fresh.order, float(ordered.objective[-1]), float(fresh.objective[-1]))
    report |= {"swaps": len(warm.swaps), "filled": len(warm.filled), "max_churn": stability.max_churn, "margin": stability.margin}
    if warm.fallback:
        report["fallback"] = warm.fallback
    return ordered, warm, report
