"""TAGS's ``hard`` and ``quota`` modes under constraints (``core/selection/constraints.py``).

Both modes keep their own per-pick feasibility rule (``core/tags/modes.py``) and the constraints
keep theirs: a row is a candidate only if both admit it.
  hard: among the constraint-admissible grounded rows, the row of largest gain with
      KL(t ‖ p_{S+i}) ≤ δ_pick, else the one of least ΔKL.
  quota: among the constraint-admissible grounded rows, the row of largest gain whose primary leaf
      has quota left, else (no such row: the quotas cannot absorb the budget) the row of largest gain.
      Quotas B_ℓ are the unconstrained ones over the rows not excluded.
Rows without a grounded tag come after the grounded ones, in row order. Pinned rows enter first, by
the same rule among themselves, and count against the budget and the rule: they use up their
primary leaves' quotas and the early picks of the cap schedule, and move KL. Pins that break the
rule are an :class:`InfeasibleConstraints`: more pins on a leaf than its quota, or a pin that
takes KL above the cap where another admissible sample would have kept it within.
Free picks run lazily (hard: :class:`HardSearch`; quota: a lazy frontier with the closed leaves'
rows parked); picks owed to a label minimum are scored afresh among the rows carrying it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mig_assets.core.selection.constraints import Constraints, ConstraintState, InfeasibleConstraints, admissible_rows
from mig_assets.core.tags.greedy import GreedyRun, finish_selection, quota_setup
from mig_assets.core.tags.hard_search import HardSearch, hard_pick_among
from mig_assets.core.tags.information import Scorer, row_sums
from mig_assets.core.tags.lazy import Frontier, groups_by_value
from mig_assets.core.tags.params import TagsSelection


def quota_plan(run: GreedyRun, constraints: Constraints, check_pins: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Each row's primary leaf and the leaf quotas B_ℓ over the grounded rows not excluded
    (``quota_setup``); raises when the pins alone exceed a leaf's quota (``check_pins``)."""
    assert run.target is not None  # aligned modes have a target
    primary, quotas = quota_setup(run, constraints.banned)
    if not check_pins:
        return primary, quotas
    pinned_leaves = primary[constraints.pinned]
    pinned_per_leaf = np.bincount(pinned_leaves[pinned_leaves >= 0], minlength=run.L)
    for leaf in np.flatnonzero(pinned_per_leaf > quotas).tolist()[:1]:
        raise InfeasibleConstraints(
            f"align quota: {pinned_per_leaf[leaf]} must_include samples have leaf {leaf} as their primary leaf, above its quota of "
            f"{quotas[leaf]} ({run.k} picks x target share {run.target[leaf]:.4g}, by largest remainder)"
        )
    return primary, quotas


def quota_pick_among(run: GreedyRun, rows: np.ndarray, primary: np.ndarray, open_leaf: np.ndarray) -> tuple[int, float]:
    """The quota rule over ``rows`` (ascending), every gain fresh: (row, gain)."""
    grounded = rows[run.mass[rows] > 0]
    if not len(grounded):
        return int(rows[0]), 0.0
    gains = row_sums(run.U, run.node_terms, grounded)
    within = open_leaf[primary[grounded]]
    best = int(np.argmax(np.where(within, gains, -np.inf) if within.any() else gains))  # the first maximum: the lowest row
    return int(grounded[best]), float(gains[best])


def pin_breaks_cap(run: GreedyRun, row: int, dkl: float, pick: int, least_dkl: float) -> InfeasibleConstraints:
    cap = run.params.kl_cap_at(pick, run.k)
    return InfeasibleConstraints(
        f"align hard: must_include sample (row {row}) enters at pick {pick + 1} of {run.k} with KL(t || p_S) = {run.kl_now + dkl:.4g}, "
        f"above the cap {cap:.4g} at that pick, where a sample not pinned would keep it at {run.kl_now + least_dkl:.4g}"
    )


class _Picks:
    """The picks so far, recorded into the run and the constraint state."""

    def __init__(self, run: GreedyRun, state: ConstraintState, primary: np.ndarray | None):
        self.run, self.state, self.primary = run, state, primary
        self.order, self.scores = np.empty(run.k, dtype=np.int64), np.empty(run.k)
        self.used = np.zeros(run.L, dtype=np.int64)  # picks per primary leaf (quota)
        self.fallbacks = 0  # hard: picks above the cap

    def take(self, pick: int, row: int, score: float, dkl: float = 0.0) -> np.ndarray:
        """Record a pick; returns the rows it retires (see :meth:`ConstraintState.admit`)."""
        self.order[pick], self.scores[pick] = row, score
        self.run.add(row)
        self.run.kl_now += dkl
        if self.primary is not None and self.primary[row] >= 0:
            self.used[self.primary[row]] += 1
        return self.state.admit(row)


def select_with_rule(run: GreedyRun, constraints: Constraints, n_top_nodes: int, check_pins: bool = True) -> TagsSelection:
    """Lazy greedy in hard or quota mode under ``constraints`` (see the module notes). Without
    ``check_pins`` pins that break the rule enter anyway (a warm start's previous picks)."""
    state = ConstraintState(constraints, run.k)
    if run.align == "hard":
        picks, info, evaluations = _select_hard(run, constraints, state, check_pins)
    else:
        picks, info, evaluations = _select_quota(run, constraints, state, check_pins)
    return finish_selection(run, picks.order, picks.scores, evaluations, {"constrained": True, **info}, n_top_nodes)


def _ungrounded_or_stuck(run: GreedyRun, state: ConstraintState, pick: int) -> int:
    rest = np.flatnonzero(state.alive & (run.mass <= 0))
    if not len(rest):
        raise state.stuck(pick, run.k)
    return int(rest[0])


def _select_hard(run: GreedyRun, constraints: Constraints, state: ConstraintState, check_pins: bool) -> tuple[_Picks, dict, int]:
    picks = _Picks(run, state, None)
    free = run.grounded[state.alive[run.grounded]]
    search = HardSearch(run, free) if len(free) else None  # built before the pins: it tells whether one breaks the cap
    pending = constraints.pinned
    for pick in range(len(constraints.pinned)):
        row, gain, dkl, within = hard_pick_among(run, pending, pick)
        if check_pins and not within and search is not None:
            search.begin(pick)
            least, least_row = search.least_dkl(pick)
            if least_row >= 0 and -least <= search.room:
                raise pin_breaks_cap(run, row, dkl, pick, -least)
        picks.fallbacks += not within
        pending = pending[pending != row]
        retired = picks.take(pick, row, gain, dkl)
        if search is not None:
            search.retire(retired)
    for pick in range(len(constraints.pinned), run.k):
        if state.needs_owed_label():
            owed = state.owed_label_rows()
            if not len(owed):
                raise state.stuck(pick, run.k)
            grounded = owed[run.mass[owed] > 0]
            row, gain, dkl, within = hard_pick_among(run, grounded, pick) if len(grounded) else (int(owed[0]), 0.0, 0.0, True)
            picks.fallbacks += not within
        else:
            row = -1
            if search is not None:
                search.begin(pick)
                row, gain, dkl = search.best(pick)
            if row < 0:
                row, gain, dkl = _ungrounded_or_stuck(run, state, pick), 0.0, 0.0
        retired = picks.take(pick, row, gain, dkl)
        if search is not None:
            search.retire(retired)
    if search is not None:
        picks.fallbacks += search.fallbacks
    return picks, {"fallback_picks": picks.fallbacks}, search.evaluations if search is not None else 0


def _select_quota(run: GreedyRun, constraints: Constraints, state: ConstraintState, check_pins: bool) -> tuple[_Picks, dict, int]:
    primary, quotas = quota_plan(run, constraints, check_pins)
    picks = _Picks(run, state, primary)
    pending = constraints.pinned
    for pick in range(len(constraints.pinned)):
        row, gain = quota_pick_among(run, pending, primary, picks.used < quotas)
        pending = pending[pending != row]
        picks.take(pick, row, gain)
    scorer = Scorer((run.U, run.node_terms))
    free = run.grounded[state.alive[run.grounded]]
    frontier = Frontier(free, scorer(free), scorer)
    leaves, leaf_rows = groups_by_value(primary, free)
    rows_of_leaf = dict(zip(leaves.tolist(), leaf_rows))
    for leaf, rows in rows_of_leaf.items():
        if picks.used[leaf] >= quotas[leaf]:
            frontier.deactivate(rows)
    info: dict = {"quotas": quotas}
    global_fill = False
    for pick in range(len(constraints.pinned), run.k):
        if state.needs_owed_label():
            owed = state.owed_label_rows()
            if not len(owed):
                raise state.stuck(pick, run.k)
            row, gain = quota_pick_among(run, owed, primary, picks.used < quotas)
        else:
            gain, row = frontier.best(pick, 0.0)
            if row < 0 and not global_fill:  # no admissible row has quota left: the fill beyond the quotas
                global_fill = True
                frontier.activate_all()
                info["global_fill_from"] = pick
                gain, row = frontier.best(pick, 0.0)
            if row < 0:
                row, gain = _ungrounded_or_stuck(run, state, pick), 0.0
        frontier.retire(picks.take(pick, row, gain))
        leaf = int(primary[row])
        if not global_fill and leaf >= 0 and picks.used[leaf] >= quotas[leaf] and leaf in rows_of_leaf:
            frontier.deactivate(rows_of_leaf[leaf])
    info["primary_leaf_counts"] = picks.used
    return picks, info, scorer.evaluations


def select_dense_with_rule(run: GreedyRun, constraints: Constraints) -> np.ndarray:
    """The reference for :func:`select_with_rule`: the admissible rows recomputed from scratch
    (``admissible_rows``) and the mode's rule applied to all of them, every score fresh, at every pick."""
    constraints.validate(run.k)
    primary, quotas = quota_plan(run, constraints) if run.align == "quota" else (np.full(run.N, -1), np.zeros(run.L, np.int64))
    used = np.zeros(run.L, dtype=np.int64)
    unpinned = dataclasses.replace(constraints, pinned=np.empty(0, np.int64), label_min=np.empty(0, np.int64))
    order: list[int] = []
    for pick in range(run.k):
        rows = np.flatnonzero(admissible_rows(constraints, np.asarray(order, np.int64), run.k))
        if not len(rows):
            raise InfeasibleConstraints(f"no admissible row at pick {pick + 1} of {run.k}")
        pinned_phase = pick < len(constraints.pinned)
        grounded = rows if pinned_phase else rows[run.mass[rows] > 0]
        dkl = 0.0
        if run.align == "quota":
            row, _ = quota_pick_among(run, rows, primary, used < quotas)
        elif len(grounded):
            row, _, dkl, within = hard_pick_among(run, grounded, pick)
            if pinned_phase and not within:
                others = admissible_rows(unpinned, np.asarray(order, np.int64), run.k)
                others[constraints.pinned] = False
                others = np.flatnonzero(others & (run.mass > 0))
                room = run.params.kl_cap_at(pick, run.k) - run.kl_now
                alternatives = run.shifts(others) - row_sums(run.A, run.pull_terms, others)
                if len(others) and alternatives.min() <= room:
                    raise pin_breaks_cap(run, row, dkl, pick, float(alternatives.min()))
        else:
            row = int(rows[0])
        order.append(row)
        run.add(row)
        run.kl_now += dkl
        if primary[row] >= 0:
            used[primary[row]] += 1
    return np.asarray(order, np.int64)
