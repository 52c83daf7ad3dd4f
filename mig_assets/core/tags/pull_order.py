"""Hard mode's search structures (``shared/specs/tags.md`` §1.9): rows sorted by their KL pull, in blocks
with a stale-gain maximum, so that a pick looks only at the rows that might be feasible
(:class:`PullOrderedGain`), and pulls memoised per class of identical leaf rows (:class:`ClassPulls`)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mig_assets.core.tags.information import Scorer, ScoreTerms, row_entries, row_sum, row_sums

_PULL_BLOCK = 256  # rows per block of the pull-ordered slots, each block with a stale-gain maximum
_OVERFLOW_MIN = 4096  # rows whose pull fell back are merged into the pull order beyond this many
_RECENT_MAX = 512  # rows that left the pull order are sorted into the overflow beyond this many


def row_digest(columns: np.ndarray, values: np.ndarray, offsets: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's entries (listed row by row from ``offsets``, ``counts`` each)."""
    mix = columns.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    mix ^= values.view(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
    mix ^= mix >> np.uint64(31)
    mix *= np.uint64(0x94D049BB133111EB)
    digest = counts.astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93)
    nonempty = counts > 0
    if nonempty.any():
        digest[nonempty] += np.add.reduceat(mix, offsets[nonempty])
    return digest


def identical_rows(matrix: sp.csr_array, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classes of exactly identical rows (same columns, same values) among ``rows`` (ascending):
    each row's class and each class's first row. Rows are hashed, then checked entry by entry
    against the first row of their hash; a row that differs (a collision) gets a class of its own."""
    rows = np.asarray(rows, dtype=np.int64)
    columns, values, offsets, counts = row_entries(matrix, rows)
    _, first, classes = np.unique(row_digest(columns, values, offsets, counts), return_index=True, return_inverse=True)  # first: the lowest row of each hash
    classes = classes.ravel()
    lead = first[classes]
    same = counts == counts[lead]
    entry_lead = np.repeat(offsets[lead] - offsets, counts) + np.arange(len(columns))
    entry_lead = np.where(np.repeat(same, counts), entry_lead, 0)
    equal = (columns == columns[entry_lead]) & (values == values[entry_lead])
    nonempty = counts > 0
    if nonempty.any():
        same[nonempty] &= np.logical_and.reduceat(equal, offsets[nonempty])
    odd = np.flatnonzero(~same)
    classes[odd] = len(first) + np.arange(len(odd))
    return classes, rows[np.concatenate([first, odd])]


class ClassPulls:
    """Pulls Σ_ℓ t_ℓ·ln(1 + a_iℓ/(m_ℓ + ε)), memoised per class of identical leaf rows (whose row sums
    are identical): ``known`` is the latest value of each class (an upper bound of its pull from then
    on, since pulls never grow), ``stamp`` the pick it was computed at (the caller sets ``pick``).
    Row ``dead`` (= N) stands for no row: its pull is −inf."""

    def __init__(self, leaf_matrix: sp.csr_array, pull_terms: ScoreTerms, n_rows: int, rows: np.ndarray):
        self.A, self.terms = leaf_matrix, pull_terms
        classes, self.lead = identical_rows(leaf_matrix, rows)
        n_classes = len(self.lead)
        self.dead = n_rows
        self.cls = np.full(n_rows + 1, n_classes, dtype=np.int64)
        self.cls[rows] = classes
        self.known = np.full(n_classes + 1, -np.inf)
        self.stamp = np.full(n_classes + 1, np.iinfo(np.int64).max, dtype=np.int64)
        self.pick = 0
        self.evaluations = 0
        self.refresh_classes(np.arange(n_classes))

    def refresh_classes(self, classes: np.ndarray) -> None:
        self.known[classes] = row_sums(self.A, self.terms, self.lead[classes])
        self.stamp[classes] = self.pick
        self.evaluations += len(classes)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """Fresh pulls of ``rows``."""
        classes = self.cls[rows]
        stale = self.stamp[classes] != self.pick
        if stale.any():
            todo = np.sort(classes[stale])
            self.refresh_classes(todo[np.diff(todo, prepend=-1) != 0])
        return self.known[classes]

    def one(self, row: int) -> float:
        c = self.cls[row]
        if self.stamp[c] != self.pick:
            self.known[c] = row_sum(self.A, self.terms, int(self.lead[c]))
            self.stamp[c] = self.pick
            self.evaluations += 1
        return float(self.known[c])

    def bound(self, rows: np.ndarray) -> np.ndarray:
        """Remembered pulls of ``rows``: upper bounds, exact where fresh."""
        return self.known[self.cls[rows]]

    def fresh(self, rows: np.ndarray) -> np.ndarray:
        return self.stamp[self.cls[rows]] == self.pick


class GainMemo:
    """Every row's latest gain (``h``; −inf once picked, and for the row ``dead`` = N that stands for no
    row: an upper bound of its gain from then on) and the pick it was computed at (``stamp``)."""

    def __init__(self, scorer: Scorer, n_rows: int, rows: np.ndarray, pick: int = 0):
        self.scorer = scorer
        self.h = np.full(n_rows + 1, -np.inf)
        self.stamp = np.full(n_rows + 1, -1, dtype=np.int64)
        self.refresh(rows, pick)

    def refresh(self, rows: np.ndarray, pick: int) -> np.ndarray:
        self.h[rows] = values = self.scorer(rows)
        self.stamp[rows] = pick
        return values


class GaveUp(Exception):
    """The gain search looked at many rows without finding a feasible one."""


def _passing(keys: np.ndarray, shift: float, room: float) -> int:
    """Number of leading ``keys`` (descending) that pass fl(c − key) ≤ room: a bisection (rounding is
    monotone, so the keys that pass form a prefix)."""
    lo, hi = 0, len(keys)
    while lo < hi:
        mid = (lo + hi) // 2
        if shift - keys[mid] <= room:
            lo = mid + 1
        else:
            hi = mid
    return lo


class _SortedRows:
    """Rows sorted by a remembered pull (``key``, descending), each with a bound of its gain
    (``value``), in blocks of ``block`` slots with the largest bound of each (``block_max``).
    Emptied slots hold the row ``dead`` (gain −inf)."""

    def __init__(self, rows: np.ndarray, keys: np.ndarray, values: np.ndarray, block: int, dead: int):
        self.block, self.dead = block, dead
        n_slots = max(1, -(-len(rows) // block)) * block
        self.order = np.full(n_slots, dead, dtype=np.int64)
        self.order[: len(rows)] = rows
        self.key = np.full(n_slots, -np.inf)
        self.key[: len(rows)] = keys
        self.value = np.full(n_slots, -np.inf)
        self.value[: len(rows)] = values
        self.block_max = self.value.reshape(-1, block).max(axis=1)
        self.size = len(rows)

    def live(self, gain: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, keys, gain bounds) of the rows not emptied nor picked, in order."""
        keep = self.value > -np.inf
        keep[keep] = gain[self.order[keep]] > -np.inf
        return self.order[keep], self.key[keep], self.value[keep]

    def collect(self, prefix: int, x: float, gain: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Among the first ``prefix`` slots, those whose row has a gain ≥ x (> −inf): (slots, rows,
        blocks looked at); the bounds of the rows looked at are updated from ``gain``."""
        n_blocks = -(-prefix // self.block)
        if x > -np.inf:
            blocks = np.flatnonzero(self.block_max[:n_blocks] >= x)
            chosen = self.value.reshape(-1, self.block)[blocks] >= x
        else:  # every live slot
            blocks = np.flatnonzero(self.block_max[:n_blocks] > x)
            chosen = self.value.reshape(-1, self.block)[blocks] > x
        if len(blocks) and blocks[-1] == n_blocks - 1 and prefix % self.block:
            chosen[-1, prefix % self.block :] = False  # the last block is partly outside the prefix
        slots = (blocks[:, None] * self.block + np.arange(self.block))[chosen]
        rows = self.order[slots]
        h = gain[rows]
        self.value[slots] = h
        keep = (h >= x) & (h > -np.inf)
        return slots[keep], rows[keep], blocks

    def threshold(self, prefix: int, count: int) -> float:
        """A gain x with rows of bound ≥ x in at least ``count`` blocks of the prefix (−inf: all)."""
        maxima = self.block_max[: -(-prefix // self.block)]
        if len(maxima) <= count:
            return -np.inf
        return float(-np.partition(-maxima, count - 1)[count - 1])

    def empty(self, slots: np.ndarray) -> None:
        self.order[slots] = self.dead
        self.value[slots] = -np.inf

    def tighten(self, blocks: np.ndarray) -> None:
        if len(blocks):
            self.block_max[blocks] = self.value.reshape(-1, self.block)[blocks].max(axis=1)


def _merge_sorted(a: tuple[np.ndarray, np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two (rows, keys, values) lists sorted by key (descending) merged into one, stably (a first)."""
    at = np.searchsorted(-a[1], -b[1], side="right")
    rows, keys, values = (np.insert(x, at, y) for x, y in zip(a, b))
    return rows, keys, values


class PullOrderedGain:
    """Hard mode's gain search in one mass group: the row of largest gain among the feasible rows,
    those with ΔKL_i = fl(c − pull_i) ≤ room (c = ln(1 + s/(M + εL)), common to the group), ties
    to the lowest row.

    Feasibility depends on the pull alone, monotonically (rounding is monotone), and gains and
    pulls never grow as the selection grows, so remembered (stale) values bound the fresh ones from
    above. Rows sit in :class:`_SortedRows`, sorted by their remembered pull when they were placed:
    the slots whose key passes the test form a prefix, found by bisection, and every row after it
    is surely infeasible; the blocks' gain bounds let a search collect the prefix's rows of stale
    gain ≥ x without looking at the others. A search collects the best stale gains first, in
    growing batches, refreshing the pull and then (if still feasible) the gain, until every
    possibly feasible row whose stale gain reaches the best fresh feasible gain is fresh. A
    collected row whose remembered pull fails the test leaves its slot for a short unsorted list;
    the list is sorted into a second, smaller level, and that level into the main one, when they
    grow. Picked rows are dropped lazily (their gain is −inf).
    """

    def __init__(self, rows: np.ndarray, gains: GainMemo, pulls: ClassPulls):
        self.gains, self.pulls, self.dead = gains, pulls, pulls.dead
        self.merges = 0
        self.block = _PULL_BLOCK
        rows = np.asarray(rows, dtype=np.int64)
        keys = pulls.bound(rows)
        by_pull = np.argsort(-keys, kind="stable")
        self.main = _SortedRows(rows[by_pull], keys[by_pull], gains.h[rows[by_pull]], self.block, self.dead)
        self.level_limit = max(_OVERFLOW_MIN, len(rows) >> 3)
        self._reset_overflow()

    def _reset_overflow(self) -> None:
        empty = np.empty(0, dtype=np.int64), np.empty(0), np.empty(0)
        self.overflow = _SortedRows(*empty, self.block, self.dead)
        self.recent, self.recent_key, self.recent_h = empty

    def _sort_recent(self) -> None:
        """The recent rows into the second level; that level into the main one once it is large."""
        by_pull = np.argsort(-self.recent_key, kind="stable")
        recent = self.recent[by_pull], self.recent_key[by_pull], self.recent_h[by_pull]
        merged = _merge_sorted(self.overflow.live(self.gains.h), recent)
        if len(merged[0]) > self.level_limit:
            self.merges += 1
            merged = _merge_sorted(self.main.live(self.gains.h), merged)
            self.main = _SortedRows(*merged, self.block, self.dead)
            self._reset_overflow()
        else:
            self.overflow = _SortedRows(*merged, self.block, self.dead)
            self.recent, self.recent_key, self.recent_h = self.recent[:0], self.recent_key[:0], self.recent_h[:0]

    def _to_recent(self, rows: np.ndarray) -> None:
        self.recent = np.concatenate([self.recent, rows])
        self.recent_key = np.concatenate([self.recent_key, self.pulls.bound(rows)])
        self.recent_h = np.concatenate([self.recent_h, self.gains.h[rows]])

    def best(self, pick: int, shift: float, room: float, floor: float = -np.inf, give_up: int | None = None) -> tuple[float, int]:
        """(gain, row) of the best feasible row at this pick with gain ≥ ``floor``, or (−inf, −1);
        raises :class:`GaveUp` once more than ``give_up`` rows were refreshed without a feasible one."""
        if len(self.recent) > _RECENT_MAX:
            self._sort_recent()
        main, overflow, gains, pulls = self.main, self.overflow, self.gains, self.pulls
        prefix = _passing(main.key, shift, room)
        in_overflow = _passing(overflow.key, shift, room) if overflow.size else 0
        # positions of the recent rows that may pass (rows coming during this search fail the test)
        recent = np.flatnonzero((shift - self.recent_key) <= room) if len(self.recent) else self.recent
        if prefix == 0 and in_overflow == 0 and not len(recent):
            return -np.inf, -1  # the remembered pulls rule out every row
        best, batch, looked = -np.inf, 8, 0
        while True:
            x = best if best > -np.inf else main.threshold(prefix, batch)
            x = max(x, floor)
            batch *= 4
            main_slots, main_rows, main_blocks = main.collect(prefix, x, gains.h)
            parts = [main_rows]
            if in_overflow:
                over_slots, over_rows, over_blocks = overflow.collect(in_overflow, x, gains.h)
                parts.append(over_rows)
            if len(recent):
                candidates = self.recent[recent[self.recent_h[recent] >= x]]
                h = gains.h[candidates]
                parts.append(candidates[(h >= x) & (h > -np.inf)])
            rows = np.concatenate(parts) if len(parts) > 1 else main_rows
            # remembered pulls, then fresh ones: the rows that fail leave their level
            keys = pulls.bound(rows)
            out = (shift - keys) > room
            stale = ~out & ~pulls.fresh(rows)
            if stale.any():
                looked += int(np.count_nonzero(stale))
                out[stale] = (shift - pulls(rows[stale])) > room
            if out.any():
                n_main = len(main_rows)
                n_over = n_main + (len(over_rows) if in_overflow else 0)
                main.empty(main_slots[out[:n_main]])
                if in_overflow:
                    overflow.empty(over_slots[out[n_main:n_over]])
                leaving = out.copy()
                leaving[n_over:] = False  # rows of the recent list stay there
                self._to_recent(rows[leaving])
                rows = rows[~out]
                if len(main_slots):
                    main_slots = main_slots[~out[:n_main]]
                if in_overflow:
                    over_slots = over_slots[~out[n_main:n_over]]
            stale = gains.stamp[rows] != pick
            if stale.any():
                gains.refresh(rows[stale], pick)
                main.value[main_slots] = gains.h[main.order[main_slots]]
                if in_overflow:
                    overflow.value[over_slots] = gains.h[overflow.order[over_slots]]
            main.tighten(main_blocks)
            if in_overflow:
                overflow.tighten(over_blocks)
            if len(rows):
                best = max(best, float(gains.h[rows].max()))
            if best >= x or x <= floor or x == -np.inf:
                break
            if best == -np.inf and give_up is not None and looked > give_up:
                raise GaveUp
        if best == -np.inf or best < floor:
            return -np.inf, -1
        return best, int(rows[gains.h[rows] == best].min())
