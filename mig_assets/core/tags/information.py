"""Tree-level information and KL (``shared/specs/tags.md`` §1.7, §1.9): the exact row scores every TAGS
greedy sums, and the metrics reported on a selection.

For a selection S, x_v(S) = Σ_{i∈S} u_iv and the information is E(S) = Σ_v β_{h(v)}·[φ(x_v) − φ(0)],
φ(x) = (x + a)^b, the φ of ``core/mig/algorithm.py``; E is monotone submodular. The selection's leaf
distribution is p_S(ℓ) = (m_ℓ + ε)/(M + εL), m = Σ_{i∈S} a_i, M = Σ_ℓ m_ℓ; KL is the forward
KL(t ‖ p_S) (mass-covering) throughout.

Floating point: every score is a sum of a row's terms by ``np.add.reduceat``, so a row scores the
same alone or in a batch (the approach of ``core/mig/algorithm.py``); the lazy greedy and the full
re-scan of ``core/tags/dense.py`` pick identically, and ties go to the lowest row.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mig_assets.core.mig.problem import MigParams, phi, phi_function
from mig_assets.core.tags.problem import TagsProblem, canonical_matrix

_BLOCK_ROWS = 1 << 16  # rows per block when every row is evaluated


def kl_divergence(target, leaf_mass, eps: float = 1e-3) -> float:
    """KL(t ‖ p) with p_ℓ = (m_ℓ + ε)/(Σm + εL), in nats; 0·log 0 = 0."""
    t = np.asarray(target, dtype=np.float64)
    m = np.asarray(leaf_mass, dtype=np.float64)
    p = (m + eps) / (m.sum() + eps * len(m))
    positive = t > 0
    return float(np.sum(t[positive] * (np.log(t[positive]) - np.log(p[positive]))))


def delta_kl(leaf_matrix, leaf_mass, target, eps: float = 1e-3, rows=None) -> np.ndarray:
    """Closed-form ΔKL_i = KL(t ‖ p_{S+i}) − KL(t ‖ p_S) for ``rows`` of A (all when None), spec §1.9:
    −Σ_ℓ t_ℓ·ln(1 + a_iℓ/(m_ℓ + ε)) + ln(1 + s_i/(M + εL)), s_i = Σ_ℓ a_iℓ, M = Σ_ℓ m_ℓ."""
    A = canonical_matrix(leaf_matrix, name="leaf_matrix")
    state = SelectionState(0, A.shape[1])
    state.m[:] = np.asarray(leaf_mass, dtype=np.float64)
    state.M = float(state.m.sum())
    leaf_terms = ScoreTerms(state, None, np.asarray(target, dtype=np.float64), MigParams(), eps)
    rows = np.arange(A.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    pulls = row_sums(A, leaf_terms, rows)
    mass = row_mass(A)[rows]
    return np.log1p(mass / (state.M + eps * A.shape[1])) - pulls


def coverage_by_level(coverage, levels) -> dict[int, float]:
    """Fraction of nodes of each level with x_v > 0 (spec §1.7 diagnostics)."""
    coverage = np.asarray(coverage)
    levels = np.asarray(levels, dtype=np.int64)
    return {int(h): float(np.mean(coverage[levels == h] > 0)) for h in np.unique(levels)}


def leaf_entropy(leaf_mass) -> float:
    """Shannon entropy (nats) of the selection's leaf distribution m / Σm; 0 for an empty selection."""
    m = np.asarray(leaf_mass, dtype=np.float64)
    total = m.sum()
    if total <= 0:
        return 0.0
    p = m[m > 0] / total
    return float(-np.sum(p * np.log(p)))


def objective(problem: TagsProblem, rows, phi_a: float = 1e-6, phi_b: float = 0.8) -> float:
    """E(S) = Σ_v β_{h(v)}·[φ(x_v(S)) − φ(0)] for the selected ``rows``, computed from scratch."""
    params = MigParams(phi_a=phi_a, phi_b=phi_b)
    x = np.asarray(problem.paths[np.asarray(rows, dtype=np.int64)].sum(axis=0)).ravel()
    return float(np.sum(problem.node_weights * (phi(x, params) - phi(np.zeros_like(x), params))))


def primary_leaves(leaf_matrix) -> np.ndarray:
    """Each sample's leaf of largest weight (ties to the lowest leaf), −1 for samples without grounded tags."""
    A = canonical_matrix(leaf_matrix, name="leaf_matrix")
    counts = np.diff(A.indptr)
    result = np.full(A.shape[0], -1, dtype=np.int64)
    nonempty = np.flatnonzero(counts)
    if len(nonempty):
        rows = np.repeat(np.arange(A.shape[0]), counts)
        row_max = np.full(A.shape[0], -np.inf)
        row_max[nonempty] = np.maximum.reduceat(A.data, A.indptr[:-1][nonempty])
        at_max = np.flatnonzero(A.data == row_max[rows])
        first = at_max[np.diff(rows[at_max], prepend=-1) > 0]  # leaves ascend within a row: the lowest leaf
        result[rows[first]] = A.indices[first]
    return result


def leaf_quotas(budget: int, target, capacity=None) -> np.ndarray:
    """Integer leaf quotas B_ℓ ≈ budget·t_ℓ, summing to min(budget, Σ_{t_ℓ>0} capacity_ℓ) (spec §1.9).

    Largest-remainder (Hamilton) rounding of budget·t, ties to the lowest leaf; quota above a leaf's
    capacity (its candidates) is redistributed over the other leaves in proportion to t, repeatedly.
    """
    t = np.asarray(target, dtype=np.float64)
    if t.ndim != 1 or not (np.isfinite(t).all() and (t >= 0).all()) or t.sum() <= 0:
        raise ValueError("target must be a vector of finite, non-negative weights with positive sum")
    unlimited = np.iinfo(np.int64).max // 4
    cap = np.full(len(t), unlimited, dtype=np.int64) if capacity is None else np.asarray(capacity, dtype=np.int64)
    if cap.shape != t.shape or (cap < 0).any():
        raise ValueError("capacity must give a non-negative count per leaf")
    quotas = np.zeros(len(t), dtype=np.int64)
    remaining = int(budget)
    if remaining < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    while remaining > 0:
        open_ = np.flatnonzero((t > 0) & (quotas < cap))
        if not len(open_):
            break
        share = remaining * t[open_] / t[open_].sum()
        alloc = np.floor(share).astype(np.int64)
        leftover = remaining - int(alloc.sum())
        if leftover > 0:
            by_remainder = np.lexsort((open_, -(share - alloc)))  # largest remainder, then lowest leaf
            alloc[by_remainder[:leftover]] += 1
        alloc = np.minimum(alloc, cap[open_] - quotas[open_])
        quotas[open_] += alloc
        remaining -= int(alloc.sum())
    return quotas


def row_entries(matrix: sp.csr_array, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The stored (column, value) entries of ``rows``, concatenated, with each row's offset and count."""
    starts = matrix.indptr[rows]
    counts = matrix.indptr[rows + 1] - starts
    offsets = np.cumsum(counts) - counts
    positions = np.arange(int(counts.sum())) + np.repeat(starts - offsets, counts)
    return matrix.indices[positions], matrix.data[positions], offsets, counts


def row_sums(matrix: sp.csr_array, terms: ScoreTerms, rows: np.ndarray | None = None) -> np.ndarray:
    """Σ of each row's terms in the current state (all rows when None).

    Summed by ``np.add.reduceat``, whose result for a row depends only on that row's terms, so a row
    gets the same value alone (:func:`row_sum`) or in any batch: stale values stay exact bounds and
    lazy and full re-scans rank exactly alike (the approach of ``core/mig/algorithm.py``).
    """
    rows = np.arange(matrix.shape[0]) if rows is None else rows
    if len(rows) > _BLOCK_ROWS:  # in blocks, to bound the temporaries
        return np.concatenate([row_sums(matrix, terms, rows[start : start + _BLOCK_ROWS]) for start in range(0, len(rows), _BLOCK_ROWS)])
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
        # a block of consecutive rows: its entries are one slice
        first, last = matrix.indptr[rows[0]], matrix.indptr[rows[-1] + 1]
        columns, values = matrix.indices[first:last], matrix.data[first:last]
        offsets, counts = matrix.indptr[rows[0] : rows[-1] + 1] - first, np.diff(matrix.indptr[rows[0] : rows[-1] + 2])
    else:
        columns, values, offsets, counts = row_entries(matrix, rows)
    sums = np.zeros(len(counts))
    if not len(columns):
        return sums
    values = terms.terms(columns, values)
    if counts.all():
        return np.add.reduceat(values, offsets)
    nonempty = counts > 0
    sums[nonempty] = np.add.reduceat(values, offsets[nonempty])
    return sums


_ONE_SEGMENT = np.zeros(1, dtype=np.intp)


def row_sum(matrix: sp.csr_array, terms: ScoreTerms, row: int) -> float:
    """:func:`row_sums` of one row (the same reduceat, so the same value)."""
    entries = slice(matrix.indptr[row], matrix.indptr[row + 1])
    if entries.start == entries.stop:
        return 0.0
    return float(np.add.reduceat(terms.terms(matrix.indices[entries], matrix.data[entries]), _ONE_SEGMENT)[0])


class SelectionState:
    """x (V,) node information, m (L,) leaf mass, M = Σ m of the selection so far."""

    def __init__(self, n_nodes: int, n_leaves: int):
        self.x = np.zeros(n_nodes)
        self.m = np.zeros(n_leaves)
        self.M = 0.0


class ScoreTerms:
    """Per-entry terms of a row's score: node columns [0, V) give
    w_v·[φ(x_v + u) − φ(x_v)], leaf columns [V, V + L) give t_ℓ·ln(1 + a/(m_ℓ + ε)) (scaled by the
    leaf weights given). Both shrink as x and m grow, so stale row sums are upper bounds."""

    def __init__(self, state: SelectionState, node_weights, leaf_weights_, params: MigParams, eps: float):
        self.state, self.params, self.eps = state, params, eps
        self.phi = phi_function(params, np.float64)  # mig.py's φ, built once
        self.node_weights = None if node_weights is None else np.asarray(node_weights, dtype=np.float64)
        self.leaf_weights = None if leaf_weights_ is None else np.asarray(leaf_weights_, dtype=np.float64)
        self.split = 0 if self.node_weights is None else len(self.node_weights)

    def _node(self, cols, values):
        x = self.state.x[cols]
        return self.node_weights[cols] * (self.phi(x + values) - self.phi(x))

    def _leaf(self, cols, values):
        return self.leaf_weights[cols] * np.log1p(values / (self.state.m[cols] + self.eps))

    def terms(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        if self.leaf_weights is None:
            return self._node(cols, values)
        if self.node_weights is None:
            return self._leaf(cols, values)
        out = np.empty(len(cols))
        node = cols < self.split
        out[node] = self._node(cols[node], values[node])
        out[~node] = self._leaf(cols[~node] - self.split, values[~node])
        return out


class Scorer:
    """h_i = Σ over parts of Σ of row i's terms in that part's matrix, parts added in order.

    Each part's row sum is :func:`row_sums`'s (the same reduceat whatever the batch), so h_i is the
    same whichever way it is evaluated. Counts row evaluations.
    """

    def __init__(self, *parts: tuple[sp.csr_array, ScoreTerms]):
        self.parts = parts
        self.evaluations = 0

    def __call__(self, rows: np.ndarray | None = None) -> np.ndarray:
        self.evaluations += self.parts[0][0].shape[0] if rows is None else len(rows)
        (matrix, terms), *others = self.parts
        total = row_sums(matrix, terms, rows)
        for matrix, terms in others:
            total = total + row_sums(matrix, terms, rows)
        return total

    def one(self, row: int) -> float:
        self.evaluations += 1
        return sum((row_sum(matrix, terms, row) for matrix, terms in self.parts[1:]), row_sum(*self.parts[0], row))


def row_mass(A: sp.csr_array) -> np.ndarray:
    """s_i = Σ_ℓ a_iℓ of every row of the leaf matrix A."""
    mass = np.zeros(A.shape[0])
    counts = np.diff(A.indptr)
    nonempty = counts > 0
    if nonempty.any():
        mass[nonempty] = np.add.reduceat(A.data, A.indptr[:-1][nonempty])
    return mass
