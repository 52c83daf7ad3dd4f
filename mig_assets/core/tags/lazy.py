"""Lazy greedy over a group of rows (``shared/specs/tags.md`` §1.8): a frontier of the best stale scores,
exact because no row's score grows as the selection grows (see :class:`Frontier`)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

_FRONTIER_SIZE = 4096  # rows per group whose stale scores the lazy greedy keeps at hand
_FRONTIER_SAMPLE = 1 << 16  # values sampled to choose the frontier limit at a refill


class RowScorer(Protocol):
    """Scores of rows, as :class:`~mig_assets.core.tags.information.Scorer` gives them: of some rows, or of one."""

    def __call__(self, rows: np.ndarray) -> np.ndarray: ...

    def one(self, row: int) -> float: ...


class Frontier:
    """Lazy greedy over one group of rows whose score is fl(h_i − c): h_i never grows as the selection
    grows (so a stale h bounds the fresh one) and the shift c is common to the group at each pick.

    ``all_h`` holds every group row's stale h (−inf once picked or while inactive); the frontier
    holds, in row order, the rows with h ≥ ``hlim``; every other row has h < hlim, so its score is
    at most fl(prev(hlim) − c), since rounding is monotone. A pick re-evaluates the frontier rows
    whose bound fl(h_stale − c) can reach the best fresh score, and refills the frontier from
    ``all_h`` (O(group)) when rows outside might reach it. Among fresh rows with the best score, the
    lowest row wins. ``scorer`` is a :class:`RowScorer`.
    """

    def __init__(self, rows: np.ndarray, h: np.ndarray, scorer: RowScorer, size: int | None = None):
        self.group_rows = np.asarray(rows, dtype=np.int64)  # sorted
        self.scorer, self.size = scorer, size or _FRONTIER_SIZE
        self.all_h = np.asarray(h, dtype=np.float64).copy()
        self.all_stamps = np.full(len(rows), -1, dtype=np.int64)
        self.parked = np.full(len(rows), np.nan)  # stale h of inactive rows
        self.sample_stride = max(1, len(rows) // _FRONTIER_SAMPLE)
        self.pos = np.empty(0, dtype=np.int64)  # frontier: positions in group_rows, ascending
        self.h = np.empty(0)
        self.stamps = np.empty(0, dtype=np.int64)
        self.hlim = np.inf  # +inf: refill before the next pick
        self.outside = len(rows) > 0  # may rows outside the frontier still be candidates?
        self.refills = 0
        self.last = -1  # frontier index of the row best() returned last

    def _sync(self) -> None:
        self.all_h[self.pos] = self.h
        self.all_stamps[self.pos] = self.stamps

    def _refill(self, size: int, hlim: float | None = None) -> None:
        """Rebuild the frontier from ``all_h``: about the ``size`` best rows, or those with h ≥ ``hlim``."""
        self._sync()
        self.refills += 1
        finite = self.all_h > -np.inf
        n_finite = int(np.count_nonzero(finite))
        if hlim is None:
            if n_finite <= size:
                hlim = -np.inf
            else:  # about the ``size`` largest values, estimated from a strided sample
                sample = self.all_h[:: self.sample_stride]
                rank = min(len(sample), max(1, size // self.sample_stride)) - 1
                hlim = -np.partition(-sample, rank)[rank]
        self.pos = np.flatnonzero(finite & (self.all_h >= hlim)) if hlim > -np.inf else np.flatnonzero(finite)
        self.outside = hlim > -np.inf and len(self.pos) < n_finite
        self.hlim = hlim if self.outside else -np.inf
        self.h = self.all_h[self.pos]
        self.stamps = self.all_stamps[self.pos]
        self.last = -1

    def best(self, pick: int, shift: float) -> tuple[float, int]:
        """(score, row) of the best row of the group at this pick, or (−inf, −1) if none."""
        if self.hlim == np.inf:
            self._refill(self.size)
        # As mig.py's frontier: the first maximum of the bounds wins once it is fresh (a stale row
        # with an equal bound comes later in row order, and its fresh score can only be lower or equal).
        # Otherwise re-evaluate it alone, then every stale row whose bound reaches the best fresh score.
        size, best_fresh = self.size, -np.inf
        while True:
            bound = self.h if shift == 0.0 else self.h - shift
            top = int(np.argmax(bound)) if len(bound) else -1
            top_bound = bound[top] if top >= 0 else -np.inf
            if self.outside and (top_bound == -np.inf or np.nextafter(self.hlim, -np.inf) - shift >= top_bound):
                size *= 2  # rows outside the frontier might reach the top: take more rows
                self._refill(size)
                continue
            if top_bound == -np.inf:
                return -np.inf, -1
            if self.stamps[top] == pick:
                self.last = top
                return float(top_bound), int(self.group_rows[self.pos[top]])
            if best_fresh == -np.inf:
                targets = np.array([top])
                values = np.array([self.scorer.one(int(self.group_rows[self.pos[top]]))])
            else:
                targets = np.flatnonzero((bound >= best_fresh) & (self.stamps != pick))
                values = self.scorer(self.group_rows[self.pos[targets]])
            self.h[targets] = values
            self.stamps[targets] = pick
            best_fresh = max(best_fresh, float(np.max(values - shift)))

    def shrink(self) -> None:
        """Rebuild the frontier smaller when it has grown far beyond the rows that reach the last
        winner's stale score (after many stale rows had to be looked at once)."""
        if len(self.pos) > 8 * self.size and 0 <= self.last < len(self.pos):
            reach = int(np.count_nonzero(self.h >= self.h[self.last]))
            if len(self.pos) > 8 * max(self.size, 2 * reach):
                self._refill(max(self.size, 2 * reach))

    def _positions(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.group_rows, rows)

    def remove(self, row: int) -> None:
        """The row was picked: it stops being a candidate."""
        if 0 <= self.last < len(self.pos) and self.group_rows[self.pos[self.last]] == row:
            at, position = self.last, int(self.pos[self.last])  # the row just returned by best()
        else:
            position = int(self._positions(np.array([row]))[0])
            at = int(np.searchsorted(self.pos, position))
        self.all_h[position] = -np.inf
        if at < len(self.pos) and self.pos[at] == position:
            self.h[at] = -np.inf
        self.last = -1

    def deactivate(self, rows: np.ndarray) -> None:
        """Rows stop being candidates (their stale h is kept for :meth:`activate_all`)."""
        positions = self._positions(np.asarray(rows, dtype=np.int64))
        if len(self.pos):
            at = np.minimum(np.searchsorted(self.pos, positions), len(self.pos) - 1)
            inside = self.pos[at] == positions
            self.all_h[positions[inside]] = self.h[at[inside]]
            self.all_stamps[positions[inside]] = self.stamps[at[inside]]
            self.h[at[inside]] = -np.inf
        live = self.all_h[positions] > -np.inf
        self.parked[positions[live]] = self.all_h[positions[live]]
        self.all_h[positions] = -np.inf

    def retire(self, rows: np.ndarray) -> None:
        """Rows stop being candidates for good (a constraint retired them); rows of other groups are ignored."""
        rows = np.asarray(rows, dtype=np.int64)
        positions = self._positions(rows)
        inside = positions < len(self.group_rows)
        positions = positions[inside][self.group_rows[positions[inside]] == rows[inside]]
        if len(self.pos) and len(positions):
            at = np.minimum(np.searchsorted(self.pos, positions), len(self.pos) - 1)
            self.h[at[self.pos[at] == positions]] = -np.inf
        self.all_h[positions] = -np.inf
        self.parked[positions] = np.nan
        self.last = -1

    def activate_all(self) -> None:
        """Parked rows become candidates again, with their stale h."""
        self._sync()
        parked = ~np.isnan(self.parked)
        self.all_h[parked] = self.parked[parked]
        self.parked[:] = np.nan
        # empty the frontier, or the next refill's sync would write its −inf back over the restored rows
        self.pos, self.h, self.stamps = self.pos[:0], self.h[:0], self.stamps[:0]
        self.hlim = np.inf


def groups_by_value(values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Distinct ``values[rows]`` and the rows having each, in row order."""
    if not len(rows):
        return values[:0], []
    distinct, inverse = np.unique(values[rows], return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    return distinct, np.split(rows[order], np.cumsum(np.bincount(inverse, minlength=len(distinct)))[:-1])
