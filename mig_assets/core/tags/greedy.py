"""What every TAGS greedy shares, the lazy modes (``core/tags/modes.py``) and the dense reference
(``core/tags/dense.py``): the run's matrices, per-mode weights and update rule (:class:`GreedyRun`), and
the replay of the picks into a :class:`TagsSelection`."""

from __future__ import annotations

import numpy as np

from mig_assets.core.mig.problem import phi
from mig_assets.core.tags.information import ScoreTerms, SelectionState, kl_divergence, leaf_quotas, primary_leaves, row_entries, row_mass
from mig_assets.core.tags.params import TagsParams, TagsSelection
from mig_assets.core.tags.problem import TagsProblem, canonical_matrix
from mig_assets.core.validation import check_budget


class GreedyRun:
    """State shared by the lazy and the dense greedy: matrices, per-mode weights and the update rule."""

    def __init__(self, problem: TagsProblem, k: int, params: TagsParams, target):
        self.U = canonical_matrix(problem.paths, name="paths")
        self.A = canonical_matrix(problem.leaves, name="leaves")
        if self.A.shape[0] != self.U.shape[0]:
            raise ValueError("paths and leaves must have the same rows")
        self.N, self.V = self.U.shape
        self.L = self.A.shape[1]
        self.k = check_budget(self.N, k)
        self.params = params
        self.phi = params.phi_params
        self.w = np.asarray(problem.node_weights, dtype=np.float64)
        if self.w.shape != (self.V,):
            raise ValueError(f"node_weights must have {self.V} entries")
        self.state = SelectionState(self.V, self.L)
        self.mass = row_mass(self.A)
        # the mass in the shift, rounded to 12 decimals so that normalised rows (Σa = 1 up to rounding)
        # share one group; M itself accumulates the exact masses
        self.mass_key = np.round(self.mass, 12)
        self.mass_values, self.mass_group = np.unique(self.mass_key, return_inverse=True)
        self.grounded = np.flatnonzero(self.mass > 0)
        self.ungrounded = np.flatnonzero(self.mass <= 0)
        self.target = None
        self.align = "none"
        if target is not None:
            t = np.asarray(target, dtype=np.float64)
            if t.shape != (self.L,) or not (np.isfinite(t).all() and (t >= 0).all()) or not np.isclose(t.sum(), 1.0):
                raise ValueError(f"target must be a distribution over the {self.L} leaves (non-negative, sum 1)")
            self.target = t
            self.align = params.align
        self.node_terms = ScoreTerms(self.state, self.w, None, self.phi, params.eps)
        self.kl_now = kl_divergence(self.target, self.state.m, params.eps) if self.target is not None else 0.0
        if self.align == "penalty":
            assert self.target is not None  # select() refuses an aligned mode without a target
            column_totals = np.asarray(self.U.sum(axis=0)).ravel()
            e_pool = float(np.sum(self.w * (phi(column_totals, self.phi) - phi(np.zeros(self.V), self.phi))))
            self.e_scale = e_pool if e_pool > 0 else 1.0
            self.score_parts = (
                (self.U, ScoreTerms(self.state, self.w / self.e_scale, None, self.phi, params.eps)),
                (self.A, ScoreTerms(self.state, None, params.lam * self.target, self.phi, params.eps)),
            )
        if self.align in ("hard", "penalty"):
            self.pull_terms = ScoreTerms(self.state, None, self.target, self.phi, params.eps)

    def shift(self, mass: float) -> float:
        """The part of −ΔKL·λ that grows with M: λ·ln(1 + s/(M + εL)) (penalty), ln(1 + s/(M + εL)) (hard)."""
        scale = self.params.lam if self.align == "penalty" else 1.0
        return scale * float(np.log1p(mass / (self.state.M + self.params.eps * self.L)))

    def shifts(self, rows: np.ndarray) -> np.ndarray:
        """:meth:`shift` of each row's mass, computed once per distinct mass (as the lazy greedy does)."""
        table = np.array([self.shift(float(mass)) for mass in self.mass_values])
        return table[self.mass_group[rows]]

    def add(self, row: int) -> None:
        entries = slice(self.U.indptr[row], self.U.indptr[row + 1])
        self.state.x[self.U.indices[entries]] += self.U.data[entries]
        entries = slice(self.A.indptr[row], self.A.indptr[row + 1])
        self.state.m[self.A.indices[entries]] += self.A.data[entries]
        self.state.M += self.mass[row]


def append_ungrounded(run: GreedyRun, order: np.ndarray, scores: np.ndarray, start: int) -> None:
    """The rows without grounded tags after ``start`` picks, in row order, score 0 (aligned modes), up to the budget."""
    rest = run.ungrounded[: run.k - start]
    order[start : start + len(rest)] = rest
    scores[start : start + len(rest)] = 0.0
    for row in rest.tolist():
        run.add(row)


def quota_setup(run: GreedyRun, banned: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Quota mode's primary leaf of each row and the leaf quotas B_ℓ (:func:`leaf_quotas`) over the
    grounded rows (those not ``banned``, a mask, when given)."""
    primary = primary_leaves(run.A)
    available = run.grounded if banned is None else run.grounded[~banned[run.grounded]]
    quotas = leaf_quotas(min(run.k, len(available)), run.target, np.bincount(primary[available], minlength=run.L))
    return primary, quotas


def finish_selection(run: GreedyRun, order, scores, evaluations, info, n_top_nodes) -> TagsSelection:
    """The :class:`TagsSelection` of the picks: exact gains, E(S) and KL after each pick replayed in pick order."""
    gains, objective_, top_nodes = _replay_nodes(run, order, n_top_nodes)
    kl = _replay_kl(run, order) if run.target is not None else None
    return TagsSelection(
        order=order,
        scores=scores,
        gains=gains,
        objective=objective_,
        kl=kl,
        top_nodes=top_nodes,
        coverage=run.state.x.copy(),
        leaf_mass=run.state.m.copy(),
        align=run.align,
        gain_evaluations=int(evaluations),
        info=info,
    )


def _running_before(indices: np.ndarray, values: np.ndarray, n_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """For entries listed pick by pick: per column, the running total before and after each entry, in
    pick order (a sequential cumsum, as the greedy loop accumulated it); returned in entry order."""
    by_column = np.argsort(indices, kind="stable")
    sorted_values = values[by_column]
    after = np.empty_like(sorted_values)
    before = np.zeros_like(sorted_values)
    starts = np.flatnonzero(np.diff(indices[by_column], prepend=-1))
    for start, stop in zip(starts.tolist(), [*starts[1:].tolist(), len(indices)]):
        np.cumsum(sorted_values[start:stop], out=after[start:stop])
        before[start + 1 : stop] = after[start : stop - 1]
    before_out = np.empty_like(before)
    after_out = np.empty_like(after)
    before_out[by_column] = before
    after_out[by_column] = after
    return before_out, after_out


def _replay_nodes(run: GreedyRun, order: np.ndarray, n_top: int):
    """Each pick's exact gain, E(S) after it and its top contributing nodes, recomputed after the loop."""
    n_picks = len(order)
    nodes, values, offsets, counts = row_entries(run.U, order)
    picks = np.repeat(np.arange(n_picks), counts)
    before, after = _running_before(nodes, values, run.V)
    terms = run.w[nodes] * (phi(after, run.phi) - phi(before, run.phi))
    gains = np.bincount(picks, weights=terms, minlength=n_picks)
    objective_ = np.cumsum(gains)
    top = np.full((n_picks, n_top), -1, dtype=np.int64)
    if len(terms) and n_top > 0:
        # order entries by pick, then by decreasing term, then by node
        ranked = np.lexsort((nodes, -terms, picks))
        rank = np.arange(len(ranked)) - np.repeat(offsets, counts)
        keep = rank < n_top
        top[picks[ranked][keep], rank[keep]] = nodes[ranked][keep]
    return gains, objective_, top


def _replay_kl(run: GreedyRun, order: np.ndarray) -> np.ndarray:
    """KL(t ‖ p_S) after each pick: Σ t ln t − Σ_ℓ t_ℓ ln(m_ℓ + ε) + ln(M + εL), with running m and M."""
    t, eps, n_picks = run.target, run.params.eps, len(order)
    assert t is not None  # replayed only when there is a target
    if not n_picks:
        return np.empty(0)
    leaves, values, _, counts = row_entries(run.A, order)
    picks = np.repeat(np.arange(n_picks), counts)
    before, after = _running_before(leaves, values, run.L)
    change = t[leaves] * (np.log(after + eps) - np.log(before + eps))
    pulled = np.cumsum(np.bincount(picks, weights=change, minlength=n_picks))
    M = np.cumsum(run.mass[order])
    positive = t > 0
    constant = float(np.sum(t[positive] * np.log(t[positive]))) - float(np.log(eps))  # Σ t ln t − Σ t ln ε
    return constant - pulled + np.log(M + eps * run.L)
