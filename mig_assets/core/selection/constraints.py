"""Constraints on a greedy selection, enforced inside the greedy (not as a post-filter).

Over a pool of N rows and a budget of k picks:

- ``pinned`` (must_include): rows that enter first, in greedy order among themselves; they count
  against the budget and in the objective;
- ``banned`` (must_exclude): rows that never enter;
- ``group_ids`` + ``group_share`` (max_share): at most floor(share_g · k) picks from group g;
- ``label_members`` + ``label_min`` / ``label_max``: the number of picks carrying label m lies in
  [min_m, max_m] (a row carries a label when its ``label_members`` entry is non-zero).

At each pick the greedy takes the best *admissible* row: not picked, not banned, its group under
its cap, none of its labels at its maximum, and, when the remaining picks r equal the picks still
owed to the minimums D = Σ_m max(0, min_m − count_m) (no slack left), a row that lowers D. Slack
r − D never becomes negative, so the minimums hold when the budget is spent. :meth:`Constraints.validate`
is the one home of the feasibility checks: an infeasible spec is an :class:`InfeasibleConstraints`
naming the constraint and the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from mig_assets.core.validation import first_few


class InfeasibleConstraints(ValueError):
    """A constraint set no selection of the budget can satisfy (the message names the constraint and the numbers).

    ``picks_made``: when the greedy got stuck mid-way, the picks it had made (None when refused before selecting)."""

    def __init__(self, message: str, picks_made: int | None = None):
        super().__init__(message)
        self.picks_made = picks_made


def _int_array(values, dtype=np.int64) -> np.ndarray:
    return np.asarray(values if values is not None else [], dtype=dtype)


@dataclass(frozen=True)
class Constraints:
    """Constraints as arrays over the pool's rows (see the module docstring for their meaning)."""

    n_samples: int
    pinned: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # row indices, must_include
    banned: np.ndarray = field(default_factory=lambda: np.empty(0, bool))  # (N,) bool, must_exclude; empty: none
    group_ids: np.ndarray | None = None  # (N,) int group of each row, in [0, G); None: no caps
    group_share: np.ndarray = field(default_factory=lambda: np.empty(0))  # (G,) largest share of the budget per group, in [0, 1]
    group_names: tuple[str, ...] = ()  # (G,) for messages
    group_by: str = "group"  # what the groups are (source_file, shard, source_format), for messages
    label_members: sp.csr_array | None = None  # (N, M) rows carrying each bounded label; None: no bounds
    label_min: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # (M,) fewest picks carrying label m; empty: 0
    label_max: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # (M,) most picks carrying label m; empty: N
    label_names: tuple[str, ...] = ()  # (M,) for messages

    def __post_init__(self) -> None:
        n = self.n_samples
        pinned = _int_array(self.pinned)
        if len(pinned) and not (0 <= pinned.min() and pinned.max() < n):
            raise ValueError(f"must_include rows must lie in [0, {n})")
        if len(np.unique(pinned)) != len(pinned):
            raise ValueError("must_include lists a row twice")
        object.__setattr__(self, "pinned", np.sort(pinned))
        banned = np.asarray(self.banned, bool) if len(self.banned) else np.zeros(n, bool)
        if banned.shape != (n,):
            raise ValueError(f"must_exclude mask must have shape ({n},), got {banned.shape}")
        object.__setattr__(self, "banned", banned)
        if (self.group_ids is None) != (len(self.group_share) == 0):
            raise ValueError("max_share needs both the group of each row and a share per group")
        if self.group_ids is not None:
            ids, share = _int_array(self.group_ids), np.asarray(self.group_share, np.float64)
            if ids.shape != (n,) or (n and not (0 <= ids.min() and ids.max() < len(share))):
                raise ValueError(f"group ids must be {n} integers in [0, {len(share)})")
            if not np.all((share >= 0) & (share <= 1)):
                raise ValueError(f"max_share shares must lie in [0, 1], got {share.tolist()}")
            object.__setattr__(self, "group_ids", ids)
            object.__setattr__(self, "group_share", share)
            if len(self.group_names) != len(share):
                object.__setattr__(self, "group_names", tuple(str(g) for g in range(len(share))))
        if self.label_members is not None:
            members = sp.csr_array(self.label_members)
            n_labels = members.shape[1]
            if members.shape[0] != n:
                raise ValueError(f"label membership must have {n} rows, got {members.shape[0]}")
            members = sp.csr_array((np.ones(members.nnz, np.int64), members.indices, members.indptr), shape=members.shape)
            members.sum_duplicates()
            members.data[:] = 1  # a row carries a label or not, however often it is listed
            low = _int_array(self.label_min) if len(self.label_min) else np.zeros(n_labels, np.int64)
            high = _int_array(self.label_max) if len(self.label_max) else np.full(n_labels, n, np.int64)
            if low.shape != (n_labels,) or high.shape != (n_labels,) or (low < 0).any():
                raise ValueError(f"label bounds must be {n_labels} non-negative integers each")
            object.__setattr__(self, "label_members", members)
            object.__setattr__(self, "label_min", low)
            object.__setattr__(self, "label_max", high)
            if len(self.label_names) != n_labels:
                object.__setattr__(self, "label_names", tuple(str(m) for m in range(n_labels)))

    @property
    def active(self) -> bool:
        """Whether any constraint is set (an empty set leaves the unconstrained greedy unchanged)."""
        return bool(len(self.pinned) or self.banned.any() or self.group_ids is not None or self.label_members is not None)

    def group_caps(self, k: int) -> np.ndarray:
        """Most picks per group at budget k: floor(share_g · k) (a tiny tolerance absorbs 0.3 · 10 = 2.999...)."""
        return np.floor(self.group_share * k + 1e-9).astype(np.int64)

    def token_picks(self, tokens: np.ndarray, token_budget: int) -> int:
        """The most picks a token budget can hold under these constraints, where a token-budgeted greedy
        starts: the must_include samples (their tokens count first: InfeasibleConstraints when they
        alone exceed the budget), then the cheapest other samples not excluded that fit in the rest,
        no more than the max_share caps can fill (:meth:`fillable`)."""
        tokens = np.asarray(tokens, np.int64)
        pinned_tokens = int(tokens[self.pinned].sum())
        if pinned_tokens > token_budget:
            raise InfeasibleConstraints(f"must_include pins {len(self.pinned)} samples of {pinned_tokens:,} tokens, above the token budget of {token_budget:,}")
        free = ~self.banned
        free[self.pinned] = False
        cheapest = np.cumsum(np.sort(tokens[free]))
        return self.fillable(len(self.pinned) + int(np.searchsorted(cheapest, token_budget - pinned_tokens, side="right")))

    def fillable(self, k: int) -> int:
        """The largest count m <= k the max_share caps can fill: fill(m) = Σ_g min(floor(share_g · m), n_g) >= m,
        n_g the group's samples not excluded (k itself without caps). fill never decreases with m, so
        the answer is at most fill(k): m <- fill(m) from k reaches it without passing it."""
        if self.group_ids is None:
            return k
        available = np.bincount(self.group_ids[~self.banned], minlength=len(self.group_share))
        while (fill := int(np.minimum(self.group_caps(k), available).sum())) < k:
            k = fill
        return k

    def validate(self, k: int) -> None:
        """Raise :class:`InfeasibleConstraints` when no selection of k rows can satisfy the constraints.

        Exact for must_include, must_exclude and max_share; for label minimums it counts one pick per
        missing label (a row carrying two owed labels may settle both), so it never accepts minimums
        that the greedy's slack rule cannot meet, and may refuse a few it could.
        """
        n, pinned = self.n_samples, self.pinned
        both = pinned[self.banned[pinned]]
        if len(both):
            raise InfeasibleConstraints(f"must_include and must_exclude share {len(both)} sample(s) (rows {first_few(both.tolist())})")
        if len(pinned) > k:
            raise InfeasibleConstraints(f"must_include pins {len(pinned)} samples but the budget is {k} picks")
        allowed = n - int(self.banned.sum())
        if allowed < k:
            raise InfeasibleConstraints(f"must_exclude leaves {allowed} of {n} samples, fewer than the budget of {k} picks")
        if self.group_ids is not None:
            self._validate_groups(k, self.group_ids)
        if self.label_members is not None:
            self._validate_labels(k, self.label_members)

    def _validate_groups(self, k: int, group_ids: np.ndarray) -> None:
        caps, n_groups = self.group_caps(k), len(self.group_share)
        pinned_per_group = np.bincount(group_ids[self.pinned], minlength=n_groups)
        over = np.flatnonzero(pinned_per_group > caps)
        if len(over):
            g = int(over[0])
            raise InfeasibleConstraints(
                f"max_share: {self.group_by} {self.group_names[g]!r} has {pinned_per_group[g]} must_include samples, "
                f"above its cap of {caps[g]} (share {self.group_share[g]:g} of {k} picks)"
            )
        available = np.bincount(group_ids[~self.banned], minlength=n_groups)
        fill = int(np.minimum(caps, available).sum())
        if fill < k:
            detail = ", ".join(f"{self.group_names[g]!r} {min(caps[g], available[g])} (cap {caps[g]}, {available[g]} samples)" for g in range(n_groups))
            raise InfeasibleConstraints(f"max_share by {self.group_by}: the caps admit at most {fill} samples, fewer than the budget of {k} picks: {detail}")

    def _validate_labels(self, k: int, members: sp.csr_array) -> None:
        names, low, high = self.label_names, self.label_min, self.label_max
        for m in np.flatnonzero(low > high).tolist():
            raise InfeasibleConstraints(f"label_counts: {names[m]!r} has min {low[m]} above max {high[m]}")
        carrying = np.asarray(members[~self.banned].sum(axis=0)).ravel()
        for m in np.flatnonzero(low > carrying).tolist():
            raise InfeasibleConstraints(f"label_counts: {names[m]!r} needs at least {low[m]} samples but only {carrying[m]} not excluded carry it")
        pinned_counts = np.asarray(members[self.pinned].sum(axis=0)).ravel()
        for m in np.flatnonzero(pinned_counts > high).tolist():
            raise InfeasibleConstraints(f"label_counts: {pinned_counts[m]} must_include samples carry {names[m]!r}, above its max {high[m]}")
        owed = np.maximum(low - pinned_counts, 0)
        remaining = k - len(self.pinned)
        if owed.sum() > remaining:
            detail = ", ".join(f"{names[m]!r} {owed[m]}" for m in np.flatnonzero(owed).tolist())
            raise InfeasibleConstraints(
                f"label_counts: the minimums need {int(owed.sum())} more picks ({detail}) but only {remaining} of the {k} remain after {len(self.pinned)} must_include samples"
            )


class ConstraintState:
    """The greedy's running view of the constraints: which rows are still admissible, kept incrementally.

    Rows are retired for good when they are picked, banned, or their group or one of their labels
    reaches its cap; :meth:`admit` returns the rows a pick retires, so a lazy greedy can drop them.
    The slack rule (rows that lower the owed minimums when no slack is left) is the only
    restriction that is not permanent: :meth:`needs_owed_label` says when it applies.
    """

    def __init__(self, constraints: Constraints, k: int):
        constraints.validate(k)
        self.constraints, self.remaining = constraints, k
        self.alive = ~constraints.banned
        self.alive[constraints.pinned] = False  # pinned rows enter through their own phase
        if constraints.group_ids is not None:
            self.group_caps = constraints.group_caps(k)
            self.group_counts = np.zeros(len(self.group_caps), np.int64)
            by_group = np.argsort(constraints.group_ids, kind="stable")
            bounds = np.searchsorted(constraints.group_ids[by_group], np.arange(len(self.group_caps) + 1))
            self.group_rows = [by_group[bounds[g] : bounds[g + 1]] for g in range(len(self.group_caps))]
            for g in np.flatnonzero(self.group_caps == 0).tolist():
                self.alive[self.group_rows[g]] = False
        if constraints.label_members is not None:
            self.label_rows = sp.csc_array(constraints.label_members)
            self.label_counts = np.zeros(constraints.label_members.shape[1], np.int64)
            self.owed = constraints.label_min.copy()
            for m in np.flatnonzero(constraints.label_max == 0).tolist():
                self.alive[self._rows_of_label(m)] = False

    def _rows_of_label(self, m: int) -> np.ndarray:
        return self.label_rows.indices[self.label_rows.indptr[m] : self.label_rows.indptr[m + 1]]

    @property
    def slack(self) -> int:
        """Remaining picks not owed to a label minimum, r − D."""
        owed = int(self.owed.sum()) if self.constraints.label_members is not None else 0
        return self.remaining - owed

    def needs_owed_label(self) -> bool:
        """No slack left: the next pick must carry a label still owed to its minimum."""
        return self.constraints.label_members is not None and self.slack <= 0 and bool(self.owed.any())

    def owed_label_rows(self) -> np.ndarray:
        """Admissible rows carrying at least one label still owed (ascending)."""
        owed_columns = np.flatnonzero(self.owed)
        carries = self.label_rows[:, owed_columns].sum(axis=1) > 0
        return np.flatnonzero(self.alive & np.asarray(carries).ravel())

    def admit(self, row: int) -> np.ndarray:
        """Record a pick; returns the rows it makes inadmissible for good (the row itself included)."""
        c = self.constraints
        retired = [np.array([row], np.int64)]
        self.alive[row] = False
        self.remaining -= 1
        if c.group_ids is not None:
            g = c.group_ids[row]
            self.group_counts[g] += 1
            if self.group_counts[g] >= self.group_caps[g]:
                rows = self.group_rows[g]
                retired.append(rows[self.alive[rows]])
                self.alive[rows] = False
        if c.label_members is not None:
            labels = c.label_members.indices[c.label_members.indptr[row] : c.label_members.indptr[row + 1]]
            self.label_counts[labels] += 1
            self.owed[labels] = np.maximum(self.owed[labels] - 1, 0)
            for m in labels[self.label_counts[labels] >= c.label_max[labels]].tolist():
                rows = self._rows_of_label(m)
                retired.append(rows[self.alive[rows]])
                self.alive[rows] = False
        return np.concatenate(retired)

    def stuck(self, pick: int, k: int) -> InfeasibleConstraints:
        """The error when no admissible row is left before the budget is spent."""
        c, parts = self.constraints, []
        if c.label_members is not None:
            if self.owed.any():
                parts.append("label_counts still owe " + ", ".join(f"{c.label_names[m]!r} {self.owed[m]}" for m in np.flatnonzero(self.owed).tolist()))
            at_max = [c.label_names[m] for m in np.flatnonzero(self.label_counts >= c.label_max).tolist()]
            if at_max:
                parts.append(f"label_counts: {first_few(at_max)} at their max")
        if c.group_ids is not None:
            full = [c.group_names[g] for g in np.flatnonzero(self.group_counts >= self.group_caps).tolist()]
            parts.append(f"max_share by {c.group_by}: {len(full)} of {len(self.group_caps)} groups at their cap {first_few(full)}")
        parts.append(f"{int(self.alive.sum())} samples left admissible, {int(c.banned.sum())} excluded")
        return InfeasibleConstraints(f"no sample satisfies the constraints at pick {pick + 1} of {k}: {'; '.join(parts)}", picks_made=pick)


def admissible_rows(constraints: Constraints, picked: np.ndarray, k: int) -> np.ndarray:
    """The admissible rows after ``picked``, recomputed from scratch (the definition that
    :class:`ConstraintState` keeps incrementally; the dense greedy uses it). Pinned rows come first:
    while some are unpicked, only they are admissible."""
    c = constraints
    mask = np.ones(c.n_samples, bool)
    mask[picked] = False
    pending_pins = c.pinned[mask[c.pinned]]
    if len(pending_pins):
        only = np.zeros(c.n_samples, bool)
        only[pending_pins] = True
        return only
    mask &= ~c.banned
    if c.group_ids is not None:
        counts = np.bincount(c.group_ids[picked], minlength=len(c.group_share))
        mask &= (counts < c.group_caps(k))[c.group_ids]
    if c.label_members is not None:
        counts = np.asarray(c.label_members[picked].sum(axis=0)).ravel()
        at_max = (counts >= c.label_max).astype(np.int64)
        mask &= c.label_members @ at_max == 0
        owed = np.maximum(c.label_min - counts, 0)
        if (k - len(picked)) - owed.sum() <= 0 and owed.any():
            mask &= c.label_members @ (owed > 0).astype(np.int64) > 0
    return mask


def violations(constraints: Constraints, picked: np.ndarray, k: int) -> list[str]:
    """The constraints a selection of budget k violates (empty when it satisfies all), each as a sentence."""
    c, picked, problems = constraints, np.asarray(picked, np.int64), []
    if len(np.unique(picked)) != len(picked):
        problems.append("a row is picked twice")
    missing = np.setdiff1d(c.pinned, picked)
    if len(missing):
        problems.append(f"must_include rows {first_few(missing.tolist())} are not picked")
    if c.banned[picked].any():
        problems.append(f"must_exclude rows {first_few(picked[c.banned[picked]].tolist())} are picked")
    if c.group_ids is not None:
        counts, caps = np.bincount(c.group_ids[picked], minlength=len(c.group_share)), c.group_caps(k)
        problems += [f"{c.group_names[g]!r} has {counts[g]} picks, above its cap {caps[g]}" for g in np.flatnonzero(counts > caps).tolist()]
    if c.label_members is not None:
        counts = np.asarray(c.label_members[picked].sum(axis=0)).ravel()
        bad = np.flatnonzero((counts < c.label_min) | (counts > c.label_max))
        problems += [f"{c.label_names[m]!r} has {counts[m]} picks, outside [{c.label_min[m]}, {c.label_max[m]}]" for m in bad.tolist()]
    return problems
