"""MIG's greedy under constraints (``core/selection/constraints.py``): pins, bans, group caps, label bounds.

The constraints act inside the greedy: every pick is the row of largest gain among the rows the
constraints still admit (ties to the lowest row), so a cap that binds makes the greedy take the best
feasible candidate instead of dropping picks afterwards. Pinned rows enter first, in greedy order
among themselves (each with its gain when it entered), and count in the budget and the objective.
"""

from __future__ import annotations

import numpy as np

from mig_assets.core.mig.algorithm import (
    GAIN_MODELS,
    LazyFrontier,
    MigParams,
    MigSelection,
    gain_of_row,
    gains_of,
    phi,
    phi_prime,
    propagated_matrix,
    replay,
)
from mig_assets.core.selection.constraints import Constraints, ConstraintState, admissible_rows
from mig_assets.core.validation import check_budget


def select_constrained(
    Y, k: int, constraints: Constraints, params: MigParams = MigParams(), *, gain_factor: np.ndarray | None = None, n_top_labels: int = 3
) -> MigSelection:
    """Lazy greedy MIG selection of k rows of Y under ``constraints`` (same gains and ties as :func:`select`).

    Retired rows (picked, banned, capped) leave the lazy frontier for good; when no slack is left for
    the label minimums, the pick is the best of the admissible rows carrying an owed label, whose
    gains are evaluated afresh. Raises InfeasibleConstraints before selecting when the constraints
    cannot hold, or naming the pick at which no admissible row is left.

    ``gain_factor`` (N,), >= 1, ranks row i by gain_i · factor_i (the warm start's stickiness of the
    previous picks); the recorded gains stay the true ones.
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

    def ranked(rows: np.ndarray | None = None) -> np.ndarray:
        values = gains_of(Y, model, rows)
        return values if gain_factor is None else values * (gain_factor if rows is None else gain_factor[rows])

    def ranked_row(row: int) -> float:
        value = gain_of_row(Y, model, row)
        return value if gain_factor is None else value * float(gain_factor[row])

    def take(pick: int, row: int, gain: float) -> np.ndarray:
        order[pick] = row
        gains[pick] = gain if gain_factor is None else gain_of_row(Y, model, row)
        entries = slice(Y.indptr[row], Y.indptr[row + 1])
        model.add(Y.indices[entries], Y.data[entries])
        return state.admit(row)

    pinned = constraints.pinned
    if len(pinned):  # the pinned rows, greedily among themselves
        pins = LazyFrontier(ranked(pinned), lambda idx: ranked(pinned[idx]), lambda idx: ranked_row(int(pinned[idx])))
        for pick in range(len(pinned)):
            index, gain = pins.pop_best(pick)
            take(pick, int(pinned[index]), gain)
        evaluations += pins.evaluations
    frontier = LazyFrontier(ranked(), ranked, ranked_row)
    frontier.discard(np.flatnonzero(~state.alive))
    for pick in range(len(pinned), k):
        step = pick - len(pinned)  # the frontier's clock: a key stamped with it is exact now
        if state.needs_owed_label():
            candidates = state.owed_label_rows()
            if not len(candidates):
                raise state.stuck(pick, k)
            candidate_gains = ranked(candidates)
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


def select_dense_constrained(Y, k: int, constraints: Constraints, params: MigParams = MigParams(), *, gain_factor: np.ndarray | None = None) -> np.ndarray:
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
        if gain_factor is not None:
            gains = gains * gain_factor
        gains[~admissible_rows(constraints, np.asarray(order, np.int64), k)] = -np.inf
        row = int(np.argmax(gains))
        if gains[row] == -np.inf:
            raise ValueError(f"no admissible row at pick {len(order) + 1} of {k}")
        order.append(row)
        coverage += dense[row].astype(coverage.dtype)
    return np.asarray(order, np.int64)
