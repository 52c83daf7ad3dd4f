"""Hard mode's per-pick rule, lazily, over a set of candidate rows (``core/tags/modes.py`` notes):
the row of largest gain among those with KL(t ‖ p_{S+i}) ≤ δ_pick, else the row of least ΔKL.

Shared by the unconstrained hard greedy (``core/tags/modes.py``) and the constrained one
(``core/tags/constrained_rules.py``), which retires rows a constraint rules out; the dense form of the
same rule over a few rows is :func:`hard_pick_among`.
"""

from __future__ import annotations

import numpy as np

from mig_assets.core.tags.greedy import GreedyRun
from mig_assets.core.tags.information import Scorer, row_sums
from mig_assets.core.tags.lazy import Frontier, groups_by_value
from mig_assets.core.tags.pull_order import ClassPulls, GainMemo, GaveUp, PullOrderedGain

GIVE_UP = 2048  # the search asks for the least ΔKL after refreshing this many infeasible rows


class HardSearch:
    """Lazy search structures of hard mode over ``rows`` (grounded rows): per mass group, the rows in
    pull order with their gains (:class:`PullOrderedGain`) and a lazy frontier on the pull (least ΔKL)."""

    def __init__(self, run: GreedyRun, rows: np.ndarray):
        self.run, self.give_up = run, GIVE_UP
        self.gain_scorer = Scorer((run.U, run.node_terms))
        self.masses, group_rows = groups_by_value(run.mass_key, rows)
        self.owner = np.empty(run.N, dtype=np.int64)
        for g, g_rows in enumerate(group_rows):
            self.owner[g_rows] = g
        self.pulls = ClassPulls(run.A, run.pull_terms, run.N, rows)
        self.gains = GainMemo(self.gain_scorer, run.N, rows)
        self.kl_frontiers = [Frontier(g_rows, self.pulls.bound(g_rows), self.pulls) for g_rows in group_rows]
        self.searches = [PullOrderedGain(g_rows, self.gains, self.pulls) for g_rows in group_rows]
        self.fallbacks = 0
        self.shifts: list[float] = []
        self.room = 0.0

    @property
    def evaluations(self) -> int:
        return self.gain_scorer.evaluations + self.pulls.evaluations

    def begin(self, pick: int) -> None:
        """Set the pick: its room under the cap, δ_pick − KL(t ‖ p_S), and each group's shift."""
        self.pulls.pick = pick
        self.room = self.run.params.kl_cap_at(pick, self.run.k) - self.run.kl_now
        self.shifts = [self.run.shift(float(mass)) for mass in self.masses]  # as run.shifts computes them

    def least_dkl(self, pick: int) -> tuple[float, int]:
        """The least ΔKL among the candidates (lazily, per mass group), as (−ΔKL, row); row −1 if none."""
        least, least_row = -np.inf, -1
        for g, frontier in enumerate(self.kl_frontiers):
            s, r = frontier.best(pick, self.shifts[g])
            frontier.shrink()
            if r >= 0 and (s > least or (s == least and r < least_row)):
                least, least_row = s, r
        return least, least_row

    def _search(self, pick: int, give_up: int | None) -> tuple[float, int]:
        score, row = -np.inf, -1
        for g, group_search in enumerate(self.searches):
            s, r = group_search.best(pick, self.shifts[g], self.room, floor=score, give_up=give_up)
            if r >= 0 and (s > score or (s == score and r < row)):
                score, row = s, r
        return score, row

    def best(self, pick: int) -> tuple[int, float, float]:
        """(row, gain, ΔKL) of the pick by the hard rule (call :meth:`begin` first); row −1 when no candidate is left."""
        least = None
        try:
            # by gain, in each group's pull order; when many rows turn out infeasible, the least ΔKL
            # tells whether any row is feasible (else the search would have to look at all of them)
            score, row = self._search(pick, self.give_up)
        except GaveUp:
            least = self.least_dkl(pick)
            score, row = self._search(pick, None) if -least[0] <= self.room else (-np.inf, -1)
        if row >= 0:
            return row, score, float(self.shifts[self.owner[row]] - self.pulls.one(row))
        least_value, row = least if least is not None else self.least_dkl(pick)
        if row < 0:
            return -1, 0.0, 0.0
        self.fallbacks += 1
        return row, float(self.gain_scorer.one(row)), -least_value

    def remove(self, row: int) -> None:
        """The row was picked."""
        self.gains.h[row] = -np.inf
        self.kl_frontiers[self.owner[row]].remove(row)

    def retire(self, rows: np.ndarray) -> None:
        """Rows stop being candidates for good (picked, or ruled out by a constraint)."""
        self.gains.h[rows] = -np.inf
        for frontier in self.kl_frontiers:
            frontier.retire(rows)


def hard_pick_among(run: GreedyRun, rows: np.ndarray, pick: int) -> tuple[int, float, float, bool]:
    """The hard rule over ``rows`` (ascending), every score fresh: (row, gain, ΔKL, whether it is within the cap).

    The same row sums as the lazy search (``row_sums``, ΔKL = fl(shift − pull)), so the two agree."""
    gains = row_sums(run.U, run.node_terms, rows)
    dkl = run.shifts(rows) - row_sums(run.A, run.pull_terms, rows)
    ok = dkl <= run.params.kl_cap_at(pick, run.k) - run.kl_now
    best = int(np.argmax(np.where(ok, gains, -np.inf))) if ok.any() else int(np.argmin(dkl))  # first extremum: lowest row
    return int(rows[best]), float(gains[best]), float(dkl[best]), bool(ok[best])
