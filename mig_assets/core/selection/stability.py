"""Bounded churn on re-selection: a warm start from the previous version's picks.

    stability: {mode: warm, max_churn: 0.05, margin: 0.1}

A fresh greedy re-run after the pool grows reshuffles far more than the new data explains: one new
sample covering a label changes every later gain, and old samples displace old samples down the
line (the cascade). With ``mode: warm`` (:func:`warm_reselect`) the previous picks stay, free
slots are filled by the method's constrained greedy, and a new sample replaces a member only when
its gain beats that member's contribution by more than ``margin`` (relative), both measured on the
objective the method's greedy maximises (:class:`SeparableObjective`) and within the method's own
rule (:class:`SwapRule`); the picks from outside the previous version stay within ``max_churn`` of the budget. The constraints keep holding
(the previous picks are pinned through them). The objective lost against a fresh greedy (same
constraints, no warm start) is reported by :func:`churn_report`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp

from mig_assets.core.selection.constraints import Constraints, InfeasibleConstraints, violations
from mig_assets.core.selection.lineage import inputs_path
from mig_assets.core.store.catalog import has_relation

SWAP_SCAN = 256  # members of least loss a new sample may replace, per swap


@dataclass(frozen=True)
class StabilitySpec:
    mode: str = "fresh"  # fresh: the plain greedy; warm: start from the previous version
    max_churn: float = 0.05  # picks from outside the previous version, as a share of the budget
    margin: float = 0.1  # how much a candidate's gain must beat a previous pick's (relative)

    def __post_init__(self) -> None:
        if self.mode not in ("fresh", "warm"):
            raise ValueError(f"stability.mode: expected fresh or warm, got {self.mode!r}")
        if not 0 <= self.max_churn <= 1:
            raise ValueError(f"stability.max_churn: a share in [0, 1], got {self.max_churn!r}")
        if not self.margin >= 0:
            raise ValueError(f"stability.margin: expected >= 0, got {self.margin!r}")


def parse_stability(value, where: str) -> StabilitySpec:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping, got {value!r}")
    unknown = set(value) - {"mode", "max_churn", "margin"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; expected ['margin', 'max_churn', 'mode']")
    try:
        return StabilitySpec(**value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from error


@dataclass
class WarmResult:
    """The warm re-selection's set and how it was reached (rows of the current pool)."""

    rows: np.ndarray  # the selected rows (unordered: the method orders them)
    filled: np.ndarray  # rows the greedy added into free slots (previous picks gone, budget grown, pins)
    dropped: np.ndarray  # previous picks left out to make room (a smaller budget, new must_include samples)
    swaps: list[tuple[int, int, float, float]]  # (removed row, added row, added's gain, removed's loss), in order
    fallback: str = ""  # why the warm start could not be used (then rows is the fresh greedy's)


class SeparableObjective:
    """F(S) = Σ over parts of Σ_l w_l·f(c_l(S)), c(S) = Σ_{i∈S} M_i: the objective a warm re-selection's
    swaps are judged by, kept with the current set's column totals so that every change is exact.

    One part (M, φ, w) is the information E(S) of MIG (M = Y) and TAGS (M = the path vectors, w = β);
    aligned TAGS adds −λ·KL(t ‖ p_S), itself separable up to a constant: λ·Σ_ℓ t_ℓ ln(m_ℓ + ε) over
    the leaves and −λ·ln(M + εL) over the one column of row masses (``core/tags/warm_rules.py``).
    """

    def __init__(self, parts: list[tuple[sp.csr_array, Callable[[np.ndarray], np.ndarray], np.ndarray | None]]):
        self.parts = [(sp.csr_array(M, dtype=np.float64), f, np.ones(M.shape[1]) if w is None else np.asarray(w, np.float64)) for M, f, w in parts]
        self.totals = [np.zeros(M.shape[1]) for M, _, _ in self.parts]

    def start(self, rows: np.ndarray) -> None:
        self.totals = [np.asarray(M[rows].sum(axis=0)).ravel() for M, _, _ in self.parts]

    def _changes(self, rows: np.ndarray, sign: int) -> np.ndarray:
        """Exact change of F when each row is added (sign +1) or removed (sign −1), for each row."""
        out = np.zeros(len(rows))
        for (M, f, w), total in zip(self.parts, self.totals):
            picked = M[rows]
            counts = np.diff(picked.indptr)
            before = total[picked.indices]
            terms = w[picked.indices] * (f(before + sign * picked.data) - f(before))
            nonempty = counts > 0
            if terms.size:
                out[nonempty] += np.add.reduceat(terms, picked.indptr[:-1][nonempty])
        return out

    def gains(self, rows: np.ndarray) -> np.ndarray:
        """F(S + j) − F(S) for each row j."""
        return self._changes(rows, +1)

    def losses(self, members: np.ndarray) -> np.ndarray:
        """F(S) − F(S − i) for each member i."""
        return -self._changes(members, -1)

    def gains_without(self, j: int, members: np.ndarray) -> np.ndarray:
        """F(S − i + j) − F(S − i) for each member i, from j's columns only."""
        out = np.zeros(len(members))
        for (M, f, w), total in zip(self.parts, self.totals):
            entries = slice(M.indptr[j], M.indptr[j + 1])
            columns, values = M.indices[entries], M.data[entries]
            without = total[columns] - M[members][:, columns].toarray()
            out += (w[columns] * (f(without + values) - f(without))).sum(axis=1)
        return out

    def swap(self, i: int, j: int) -> None:
        for (M, _, _), total in zip(self.parts, self.totals):
            total += M[[j]].toarray().ravel() - M[[i]].toarray().ravel()


class SwapRule(Protocol):
    """A method's own per-pick feasibility rule, as a warm re-selection's swaps must keep it (TAGS hard and quota)."""

    def start(self, rows: np.ndarray) -> None: ...

    def admits(self, i: int, j: int) -> bool: ...

    def swap(self, i: int, j: int) -> None: ...


def warm_reselect(
    k: int,
    previous_rows: np.ndarray,
    new_rows: np.ndarray,
    constraints: Constraints,
    stability: StabilitySpec,
    fill: Callable[[Constraints], np.ndarray],
    objective: SeparableObjective,
    rule: SwapRule | None = None,
) -> WarmResult:
    """Re-select k rows starting from the previous version's picks, under ``constraints``.

    1. Keep the previous picks that are still admissible, in their previous rank order, as many as
       the budget holds beside the must_include samples from outside them.
    2. Fill the free slots with ``fill(constraints with the kept picks pinned)``, the method's own
       constrained greedy (returns the full set, pins included).
    3. Swap, while the churn allows: the new sample j of largest gain replaces the member i of least
       loss (among the SWAP_SCAN least) whose slot it earns: j's gain in S − i beats i's loss,
       F(S) − F(S − i), by more than ``margin`` relative to |loss| (gain − loss > margin·|loss|), the
       swapped set still satisfies the constraints and ``rule`` admits it. It stops when the best new
       sample earns no slot (with a ``rule``: when it earns none by its gain; one whose earned slots
       the rule or the constraints refuse leaves the candidates, and the next best is tried). Gains and losses are exact changes of ``objective``, the one the
       method's greedy maximises. Churn (picks from outside the previous version, fills included)
       stays within floor(max_churn · k); forced fills may exceed it.
    """
    n = constraints.n_samples
    previous = np.asarray(previous_rows, np.int64)
    admissible = previous[~constraints.banned[previous]]
    kept = admissible[: max(0, k - len(np.setdiff1d(constraints.pinned, admissible)))]  # room for new pins
    dropped = np.setdiff1d(admissible, kept)
    pins = np.union1d(kept, constraints.pinned)
    try:
        rows = np.asarray(fill(dataclasses.replace(constraints, pinned=pins)), np.int64)
    except InfeasibleConstraints as error:
        nothing = np.empty(0, np.int64)
        return WarmResult(np.asarray(fill(constraints), np.int64), nothing, nothing, [], f"the previous picks cannot all stay: {error}")
    filled = np.setdiff1d(rows, kept)
    member = np.zeros(n, bool)
    member[rows] = True
    swappable = member.copy()
    swappable[constraints.pinned] = False
    candidates = np.zeros(n, bool)
    candidates[np.asarray(new_rows, np.int64)] = True
    candidates &= ~member & ~constraints.banned
    objective.start(rows)
    if rule is not None:
        rule.start(rows)
    churn_left = int(np.floor(stability.max_churn * k + 1e-9)) - len(np.setdiff1d(rows, previous))
    swaps: list[tuple[int, int, float, float]] = []
    while churn_left > 0 and candidates.any():
        new = np.flatnonzero(candidates)
        j = int(new[int(np.argmax(objective.gains(new)))])
        members = np.flatnonzero(swappable)
        losses = objective.losses(members)
        weakest = np.argsort(losses, kind="stable")[:SWAP_SCAN]
        members, losses = members[weakest], losses[weakest]
        gains_without = objective.gains_without(j, members)
        # loss + margin·|loss|, as (1 + margin)·loss where the loss is not negative (information alone)
        threshold = np.where(losses >= 0, (1 + stability.margin) * losses, (1 - stability.margin) * losses)
        swap = None
        earned = np.flatnonzero(gains_without > threshold)
        any_earned = len(earned) > 0
        for position in earned.tolist():
            i = int(members[position])
            trial = np.append(np.flatnonzero(member & (np.arange(n) != i)), j)
            if not violations(constraints, trial, k) and (rule is None or rule.admits(i, j)):
                swap = (i, j, float(gains_without[position]), float(losses[position]))
                break
        if swap is None and rule is not None and any_earned:
            candidates[j] = False  # its slots break the method's rule: the next best new sample may still earn one
            continue
        if swap is None:
            break
        i = swap[0]
        member[i], member[j], swappable[i], swappable[j], candidates[j] = False, True, False, True, False
        objective.swap(i, j)
        if rule is not None:
            rule.swap(i, j)
        swaps.append(swap)
        churn_left -= 1
    return WarmResult(np.flatnonzero(member), filled, dropped, swaps)


def churn_report(previous_rows: np.ndarray, new_rows: np.ndarray, order: np.ndarray, fresh_order: np.ndarray, objective: float, fresh_objective: float) -> dict:
    """How a re-selection moved: previous picks kept and dropped, picks added from the new data and
    from old samples (the cascade), for the selection and for a fresh greedy, and the objective lost."""
    previous, new = set(np.asarray(previous_rows).tolist()), set(np.asarray(new_rows).tolist())

    def moves(rows) -> dict:
        rows = set(np.asarray(rows).tolist())
        added = rows - previous
        return {
            "kept": len(rows & previous),
            "removed": len(previous - rows),
            "added_new_samples": len(added & new),
            "added_old_samples": len(added - new),
        }

    loss = (fresh_objective - objective) / abs(fresh_objective) if fresh_objective else 0.0
    return {
        "selection": moves(order),
        "fresh_greedy": moves(fresh_order),
        "objective": objective,
        "fresh_objective": fresh_objective,
        "objective_loss_vs_fresh": loss,
    }


def previous_first(order: np.ndarray, previous_rows: np.ndarray) -> np.ndarray:
    """A warm set's rows with the previous picks that stayed first, in their previous rank order, then
    the others (new samples swapped in, fills) in ``order``: the order a token budget keeps a warm
    re-selection's picks in (after the pins), so room is cut from what the warm start added, never
    from the picks it kept."""
    previous = np.asarray(previous_rows, np.int64)
    stayed = previous[np.isin(previous, order)]
    return np.concatenate([stayed, order[~np.isin(order, stayed)]])


def warm_token_picks(constraints: Constraints, previous_rows: np.ndarray, tokens: np.ndarray, token_budget: int) -> int:
    """Where a warm re-selection under a token budget starts counting: the must_include samples and the
    previous picks still admissible, in their rank order, as many as fit (the pins' tokens first),
    then as many of the cheapest other admissible samples as fit in the tokens left (room the pool's
    changes freed); no more than :meth:`Constraints.token_picks`. Starting from the cheapest-samples
    bound instead would fill most slots with samples from outside the previous version and cut
    previous picks from the order the greedy gives the larger set."""
    from mig_assets.core.selection.budget import pinned_token_prefix

    most = constraints.token_picks(tokens, token_budget)  # refuses pins whose tokens alone exceed the budget
    previous = np.asarray(previous_rows, np.int64)
    previous = previous[~constraints.banned[previous] & ~np.isin(previous, constraints.pinned)]
    kept = pinned_token_prefix(np.concatenate([constraints.pinned, previous]), tokens, token_budget, constraints.pinned)
    free = ~constraints.banned
    free[kept] = False
    room = np.cumsum(np.sort(tokens[free]))
    extra = int(np.searchsorted(room, token_budget - int(tokens[kept].sum()), side="right"))
    return min(constraints.fillable(len(kept) + extra), most)


@dataclass(frozen=True)
class WarmStart:
    """What a warm re-selection starts from: the previous version's picks and the pool's new rows."""

    previous_rows: np.ndarray  # rows of the current pool picked by the previous version, in its rank order
    new_rows: np.ndarray  # rows that were not in the previous version's pool
    spec: StabilitySpec


def warm_reasons(warm: WarmResult, margin: float, pinned: np.ndarray) -> dict[int, str]:
    """The exact reason of each row a warm re-selection added or dropped, by row."""
    reasons = {
        int(row): "filled a free slot (previous picks left the pool or were excluded, or the budget grew): the best admissible gain"
        for row in np.setdiff1d(warm.filled, pinned).tolist()
    }
    for row in warm.dropped.tolist():
        reasons[int(row)] = "dropped to make room (a smaller budget or new must_include samples): the lowest-ranked previous picks go first"
    for removed, added, gain, loss in warm.swaps:
        reasons[removed] = f"displaced by a new sample: its gain {gain:.4g} beat this sample's contribution {loss:.4g} by more than the margin {margin:g}"
        reasons[added] = f"new sample: its gain {gain:.4g} beat the contribution {loss:.4g} of the sample it replaced by more than the margin {margin:g}"
    return reasons


def previous_version_start(con, warehouse_dir: Path, selection: str, sample_ids: list[str], spec: StabilitySpec) -> WarmStart | None:
    """The warm start of ``selection``'s next version from the catalog: its latest version's members
    (those still in the pool, in rank order) and the pool rows its input snapshot did not hold
    (without a snapshot, every row outside its members). None when there is no previous version."""
    if spec.mode != "warm" or not has_relation(con, "selections"):
        return None
    latest = con.execute("SELECT max(version) FROM selections WHERE selection = ?", [selection]).fetchall()[0][0]
    if latest is None:
        return None
    members = con.execute("SELECT sample_id FROM selection_members WHERE selection = ? AND version = ? ORDER BY rank", [selection, latest]).fetchall()
    row_of = {sid: i for i, sid in enumerate(sample_ids)}
    previous = np.array([row_of[sid] for (sid,) in members if sid in row_of], np.int64)
    snapshot = inputs_path(warehouse_dir, selection, latest)
    known = set(pq.read_table(snapshot, columns=["sample_id"]).column(0).to_pylist()) if snapshot.exists() else {sid for (sid,) in members}
    new = np.array([i for i, sid in enumerate(sample_ids) if sid not in known], np.int64)
    return WarmStart(previous, new, spec)


def steering_inputs(
    con, warehouse_dir: Path, selection: str, constraints_spec, stability_spec: StabilitySpec | None, inputs
) -> tuple[Constraints | None, WarmStart | None]:
    """A spec's constraints resolved over the catalog (bounds on tags for MIG, on tree leaves for
    TAGS) and its warm start from the previous version, for :func:`~mig_assets.core.selection.run.run_selection`."""
    from mig_assets.core.selection.constraint_spec import leaf_membership, resolve_constraints, tag_membership

    pool, tree = inputs.pool, inputs.tree
    constraints = None
    if constraints_spec is not None:
        if tree is not None:
            constraints = resolve_constraints(con, constraints_spec, pool.sample_ids, lambda names: leaf_membership(tree, pool.tags, names), "leaf")
        else:
            constraints = resolve_constraints(con, constraints_spec, pool.sample_ids, lambda names: tag_membership(pool.tags, names), "tag")
    warm = previous_version_start(con, warehouse_dir, selection, pool.sample_ids, stability_spec) if stability_spec is not None else None
    return constraints, warm
