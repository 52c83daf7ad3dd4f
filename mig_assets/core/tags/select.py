"""TAGS selection (``shared/specs/tags.md`` §1.6–1.9): path vectors, tree-level information, lazy greedy,
KL alignment.

Notation: N samples, V tree nodes (leaves first: leaf ℓ is node ℓ, ℓ < L; see ``core/tags/tree.py``),
h(v) the level of node v (leaf = 1). Sample i has leaf weights a_iℓ (matrix A, N×L) and quality
q_i ≥ 0; its path vector is u_iv = q_i·Σ_ℓ a_iℓ·γ^{h(v)−h(ℓ)} over the leaves ℓ below or at v
(matrix U, N×V, root column left out by default). For a selection S, x_v(S) = Σ_{i∈S} u_iv and the
information is E(S) = Σ_v β_{h(v)}·[φ(x_v) − φ(0)], φ(x) = (x + a)^b, the φ of ``core/mig/algorithm.py``. E is
monotone submodular: greedy by exact marginal gain ("exact-gain variant"), run lazily, is exact.

Aligned modes [R] take a target leaf distribution t (:func:`target_distribution`) and the
selection's leaf distribution p_S(ℓ) = (m_ℓ + ε)/(M + εL), m = Σ_{i∈S} a_i, M = Σ_ℓ m_ℓ; KL is the
forward KL(t ‖ p_S) (mass-covering) throughout:
  penalty: greedy on F(S) = E(S)/E(pool) − λ·KL(t ‖ p_S). Normalisation rule: E is divided by its
      value on the whole pool, a constant computed once, so both terms are O(1) and λ weighs KL
      against "all the pool's information" (the spec's per-step max normalisation would make the
      score of a row depend on every other row and rule out lazy evaluation). Laziness stays exact
      although −ΔKL is not monotone: −ΔKL_i = Σ_ℓ t_ℓ·ln(1 + a_iℓ/(m_ℓ + ε)) − ln(1 + s_i/(M + εL))
      with s_i = Σ_ℓ a_iℓ; the first part (like the gain) only shrinks as S grows, the second grows,
      but depends on i only through s_i. Rows are grouped by s_i (one group when A is normalised):
      within a group the second part is a common shift, stale values of the first part are upper
      bounds, and the groups' winners are compared.
  hard: greedy on E among rows with KL(t ‖ p_{S+i}) ≤ δ_k (δ_k decays linearly from δ₀ to δ over
      the first ``kl_cap_decay`` of the budget); when none qualifies, the row of least
      KL(t ‖ p_{S+i}). Within a mass group, feasibility is pull_i ≥ θ_k (pull_i = the first part of
      −ΔKL_i above, θ_k one number per group and pick), and pulls, like gains, only shrink: rows are
      kept sorted by stale pull with blocks of stale-gain maxima (:class:`_PullOrderedGain`), so a
      pick looks at the rows that might be feasible, best stale gain first, whatever θ_k does; the
      least ΔKL comes from a lazy frontier on the pull. Pulls are memoised per class of identical
      leaf rows (same terms, same sum).
  quota: greedy on E among rows whose primary leaf (largest a_iℓ) has quota left, quotas
      B_ℓ = round(B·t_ℓ) by largest remainder, capped by the rows available and redistributed;
      then (only if quotas cannot absorb the budget) greedy over all rows.
In aligned modes, samples without a grounded tag (s_i = 0) come last, in row order, so that
zero-information rows never displace grounded ones.

Floating point: every score is a sum of a row's terms by ``np.add.reduceat``, so a row scores the
same alone or in a batch (the approach of ``core/mig/algorithm.py``); lazy greedy and the full re-scan of
:func:`select_dense` pick identically, and ties go to the lowest row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp

from mig_assets.core.mig.algorithm import MigParams, phi, phi_function
from mig_assets.core.validation import check_budget, first_few

_FRONTIER_SIZE = 4096  # rows per group whose stale scores the lazy greedy keeps at hand
_FRONTIER_SAMPLE = 1 << 16  # values sampled to choose the frontier limit at a refill
_BLOCK_ROWS = 1 << 16  # rows per block when every row is evaluated
_PULL_BLOCK = 256  # hard mode's pull-ordered slots: rows per block with a stale-gain maximum
_OVERFLOW_MIN = 4096  # hard mode merges rows whose pull fell back into the pull order beyond this many
_GIVE_UP = 2048  # hard mode asks for the least ΔKL after refreshing this many infeasible rows
_RECENT_MAX = 512  # hard mode sorts the rows that left the pull order into the overflow beyond this many
_MAX_MASS_GROUPS = 64  # more distinct row masses than this: aligned modes re-scan instead of lazy greedy

Align = Literal["none", "penalty", "hard", "quota"]


# ---------------------------------------------------------------------------------------------------------------------
# inputs: quality, leaf weights, path vectors, level weights, targets


def rank_normalize(scores) -> np.ndarray:
    """Scores mapped to (0, 1] by rank: average rank (1-based, ties share it) / N (spec §1.7)."""
    scores = np.asarray(scores, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise ValueError(f"scores must be finite; offending indices {first_few(bad.tolist())}")
    n = len(scores)
    order = np.argsort(scores, kind="stable")
    ordered = scores[order]
    starts = np.flatnonzero(np.diff(ordered, prepend=-np.inf) != 0)  # first position of each run of ties
    ends = np.append(starts[1:], n)
    ranks = np.empty(n)
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return ranks / n if n else ranks


def check_quality(quality, n_samples: int) -> np.ndarray:
    """Quality as float64 (n_samples,); ValueError naming the indices that are negative or not finite."""
    quality = np.asarray(quality, dtype=np.float64)
    if quality.shape != (n_samples,):
        raise ValueError(f"expected {n_samples} quality values, got an array of shape {quality.shape}")
    bad = np.flatnonzero(~(np.isfinite(quality) & (quality >= 0)))
    if len(bad):
        raise ValueError(
            f"quality must be finite and >= 0; {len(bad)} values are not, at sample indices "
            f"{first_few(bad.tolist())} (values {first_few(quality[bad].tolist())})"
        )
    return quality


def leaf_weights(leaf_indptr, leaf_ids, n_leaves: int, *, normalize: bool = True, count_unassigned: bool = False) -> sp.csr_array:
    """Leaf-weight matrix A (N×L float64) from each sample's grounded tags (spec §1.6).

    Sample i's tags' leaves are ``leaf_ids[leaf_indptr[i]:leaf_indptr[i+1]]``, −1 for unassigned
    tags, which are ignored. a_iℓ = #{tags of i on leaf ℓ} / n_i with ``normalize`` (n_i = the
    grounded tags of i, or all its tags with ``count_unassigned``, which shrinks the weight of
    samples with off-tree tags), else the plain count. Samples without grounded tags get empty rows.
    """
    indptr = np.asarray(leaf_indptr, dtype=np.int64)
    ids = np.asarray(leaf_ids, dtype=np.int64)
    if indptr.ndim != 1 or not len(indptr) or indptr[0] != 0 or indptr[-1] != len(ids) or (np.diff(indptr) < 0).any():
        raise ValueError("leaf_indptr must be non-decreasing offsets from 0 to len(leaf_ids)")
    if len(ids) and not (-1 <= ids.min() and ids.max() < n_leaves):
        raise ValueError(f"leaf ids must lie in [-1, {n_leaves})")
    n_samples = len(indptr) - 1
    rows = np.repeat(np.arange(n_samples), np.diff(indptr))
    grounded = ids >= 0
    A = sp.csr_array((np.ones(int(grounded.sum())), (rows[grounded], ids[grounded])), shape=(n_samples, n_leaves))
    A.sum_duplicates()
    if normalize:
        per_row = np.diff(indptr) if count_unassigned else np.bincount(rows[grounded], minlength=n_samples)
        A.data /= np.repeat(per_row, np.diff(A.indptr))
    return A


def ancestor_weights(parents, levels, n_leaves: int, *, gamma: float = 0.5, include_root: bool = False) -> sp.csr_array:
    """Ω (L×V float64): Ω_ℓv = γ^{h(v)−h(ℓ)} for v = ℓ or an ancestor of ℓ, else 0 (spec §1.6).

    The virtual root (the node without a parent) is left out unless ``include_root``: its column
    would hold Σ_ℓ a_iℓ·γ^{H} for every sample, a pure quality term without diversity information.
    """
    parents = np.asarray(parents, dtype=np.int64)
    levels = np.asarray(levels, dtype=np.int64)
    V = len(parents)
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must lie in (0, 1], got {gamma}")
    if len(levels) != V or not 0 < n_leaves <= V:
        raise ValueError("parents and levels must have one entry per node, and 0 < n_leaves <= V")
    has_children = np.zeros(V, dtype=bool)
    has_children[parents[parents >= 0]] = True
    if has_children[:n_leaves].any():
        raise ValueError("nodes 0 .. n_leaves-1 must be leaves (nodes without children)")
    rows, cols, weights = [], [], []
    node = np.arange(n_leaves)
    for _ in range(V + 1):  # a path visits at most V nodes; one more step sees every walk end
        alive = node >= 0
        if not alive.any():
            break
        keep = alive.copy()
        keep[alive] = include_root | (parents[node[alive]] >= 0)
        leaf = np.flatnonzero(keep)
        rows.append(leaf)
        cols.append(node[leaf])
        weights.append(np.power(float(gamma), levels[node[leaf]] - levels[leaf]).astype(np.float64))
        node = np.where(alive, parents[np.maximum(node, 0)], -1)
    else:
        raise ValueError("parents contain a cycle")
    omega = sp.csr_array((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(n_leaves, V))
    omega.sum_duplicates()
    return omega


def level_weights(levels, beta: str | Mapping[int, float] | np.ndarray = "uniform") -> np.ndarray:
    """Per-node weight w_v = β_{h(v)} (V,): "uniform" (1), "equal" (1/|V_h|, every level weighs the same
    in total), a mapping level → weight (missing levels 0) or an array indexed by level."""
    levels = np.asarray(levels, dtype=np.int64)
    if isinstance(beta, str):
        if beta == "uniform":
            return np.ones(len(levels))
        if beta == "equal":
            return 1.0 / np.bincount(levels)[levels]
        raise ValueError(f"beta must be 'uniform', 'equal', a mapping or an array, got {beta!r}")
    if isinstance(beta, Mapping):
        weights = np.array([float(beta.get(int(h), 0.0)) for h in levels])
    else:
        table = np.asarray(beta, dtype=np.float64)
        if table.ndim != 1 or len(table) <= levels.max(initial=0):
            needed = levels.max(initial=0) + 1
            raise ValueError(f"a beta array must be indexed by level, with at least {needed} entries")
        weights = table[levels]
    if not (np.isfinite(weights).all() and (weights >= 0).all()):
        raise ValueError("level weights must be finite and >= 0")
    return weights


@dataclass(frozen=True)
class TagsProblem:
    """What the greedy runs on. paths: U (N×V), leaves: A (N×L), node_weights: β_{h(v)} (V,)."""

    paths: sp.csr_array
    leaves: sp.csr_array
    node_weights: np.ndarray
    levels: np.ndarray

    @property
    def n_samples(self) -> int:
        return self.paths.shape[0]

    @property
    def n_nodes(self) -> int:
        return self.paths.shape[1]

    @property
    def n_leaves(self) -> int:
        return self.leaves.shape[1]


def _canonical(matrix, n_cols: int | None = None, name: str = "matrix") -> sp.csr_array:
    matrix = sp.csr_array(matrix, dtype=np.float64)
    if not matrix.has_canonical_format or (matrix.data == 0).any():
        matrix = matrix.copy()
        matrix.sum_duplicates()
        matrix.eliminate_zeros()
    if n_cols is not None and matrix.shape[1] != n_cols:
        raise ValueError(f"{name} must have {n_cols} columns, got {matrix.shape[1]}")
    if len(matrix.data) and not (np.isfinite(matrix.data).all() and matrix.data.min() >= 0):
        raise ValueError(f"{name} must be finite and non-negative")
    return matrix


def build_problem(
    leaf_matrix, quality, parents, levels, *, gamma: float = 0.5, beta: str | Mapping[int, float] | np.ndarray = "uniform", include_root: bool = False
) -> TagsProblem:
    """U = diag(q)·A·Ω (see :func:`ancestor_weights`), with the leaf weights A and the level weights β.

    ``parents``/``levels`` describe the tree (``KnowledgeTree.parents``/``.levels``): leaves are
    nodes 0 .. L−1 where L = A's column count.
    """
    A = _canonical(leaf_matrix, name="leaf_matrix")
    if A.shape[0] == 0:
        raise ValueError("empty pool: there are no samples to select from")
    q = check_quality(quality, A.shape[0])
    omega = ancestor_weights(parents, levels, A.shape[1], gamma=gamma, include_root=include_root)
    U = sp.csr_array(sp.csr_array(A.multiply(q[:, None])) @ omega)
    U.eliminate_zeros()  # rows of zero quality carry no information
    U.sum_duplicates()
    U.sort_indices()
    return TagsProblem(U, A, level_weights(levels, beta), np.asarray(levels, dtype=np.int64))


def target_distribution(leaf_counts, alpha: float = 0.5, reachable_mask=None) -> np.ndarray:
    """Smoothed target over L leaves (spec §1.9): t_ℓ = (c_ℓ + α)/(Σc + αL); with ``reachable_mask``,
    unreachable leaves get 0 and the rest (c_ℓ + α)/Σ_reachable(c + α)."""
    counts = np.asarray(leaf_counts, dtype=np.float64)
    if counts.ndim != 1 or not len(counts) or not (np.isfinite(counts).all() and (counts >= 0).all()):
        raise ValueError("leaf_counts must be a non-empty vector of finite, non-negative counts")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    smoothed = counts + alpha
    if reachable_mask is not None:
        reachable = np.asarray(reachable_mask, dtype=bool)
        if reachable.shape != counts.shape:
            raise ValueError("reachable_mask must have one entry per leaf")
        smoothed = np.where(reachable, smoothed, 0.0)
    total = smoothed.sum()
    if total <= 0:
        raise ValueError("the target has no mass (all counts zero with alpha = 0, or nothing reachable)")
    return smoothed / total


# ---------------------------------------------------------------------------------------------------------------------
# diagnostics


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
    A = _canonical(leaf_matrix, name="leaf_matrix")
    state = _State(0, A.shape[1])
    state.m[:] = np.asarray(leaf_mass, dtype=np.float64)
    state.M = float(state.m.sum())
    leaf_terms = _Terms(state, None, np.asarray(target, dtype=np.float64), MigParams(), eps)
    rows = np.arange(A.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    pulls = _row_sums(A, leaf_terms, rows)
    mass = _row_mass(A)[rows]
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
    A = _canonical(leaf_matrix, name="leaf_matrix")
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


# ---------------------------------------------------------------------------------------------------------------------
# greedy machinery


def _entries(matrix: sp.csr_array, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The stored (column, value) entries of ``rows``, concatenated, with each row's offset and count."""
    starts = matrix.indptr[rows]
    counts = matrix.indptr[rows + 1] - starts
    offsets = np.cumsum(counts) - counts
    positions = np.arange(int(counts.sum())) + np.repeat(starts - offsets, counts)
    return matrix.indices[positions], matrix.data[positions], offsets, counts


def _row_sums(matrix: sp.csr_array, terms: _Terms, rows: np.ndarray | None = None) -> np.ndarray:
    """Σ of each row's terms in the current state (all rows when None).

    Summed by ``np.add.reduceat``, whose result for a row depends only on that row's terms, so a row
    gets the same value alone (:func:`_row_sum`) or in any batch: stale values stay exact bounds and
    lazy and full re-scans rank exactly alike (the approach of ``core/mig/algorithm.py``).
    """
    rows = np.arange(matrix.shape[0]) if rows is None else rows
    if len(rows) > _BLOCK_ROWS:  # in blocks, to bound the temporaries
        return np.concatenate([_row_sums(matrix, terms, rows[start : start + _BLOCK_ROWS]) for start in range(0, len(rows), _BLOCK_ROWS)])
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
        # a block of consecutive rows: its entries are one slice
        first, last = matrix.indptr[rows[0]], matrix.indptr[rows[-1] + 1]
        columns, values = matrix.indices[first:last], matrix.data[first:last]
        offsets, counts = matrix.indptr[rows[0] : rows[-1] + 1] - first, np.diff(matrix.indptr[rows[0] : rows[-1] + 2])
    else:
        columns, values, offsets, counts = _entries(matrix, rows)
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


def _row_sum(matrix: sp.csr_array, terms: _Terms, row: int) -> float:
    entries = slice(matrix.indptr[row], matrix.indptr[row + 1])
    if entries.start == entries.stop:
        return 0.0
    return float(np.add.reduceat(terms.terms(matrix.indices[entries], matrix.data[entries]), _ONE_SEGMENT)[0])


class _State:
    """x (V,) node information, m (L,) leaf mass, M = Σ m of the selection so far."""

    def __init__(self, n_nodes: int, n_leaves: int):
        self.x = np.zeros(n_nodes)
        self.m = np.zeros(n_leaves)
        self.M = 0.0


class _Terms:
    """Per-entry terms of a row's score: node columns [0, V) give
    w_v·[φ(x_v + u) − φ(x_v)], leaf columns [V, V + L) give t_ℓ·ln(1 + a/(m_ℓ + ε)) (scaled by the
    leaf weights given). Both shrink as x and m grow, so stale row sums are upper bounds."""

    def __init__(self, state: _State, node_weights, leaf_weights_, params: MigParams, eps: float):
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


class _Scorer:
    """h_i = Σ over parts of Σ of row i's terms in that part's matrix, parts added in order.

    Each part's row sum is :func:`_row_sums`'s (the same reduceat whatever the batch), so h_i is the
    same whichever way it is evaluated. Counts row evaluations.
    """

    def __init__(self, *parts: tuple[sp.csr_array, _Terms]):
        self.parts = parts
        self.evaluations = 0

    def __call__(self, rows: np.ndarray | None = None) -> np.ndarray:
        self.evaluations += self.parts[0][0].shape[0] if rows is None else len(rows)
        total = None
        for matrix, terms in self.parts:
            sums = _row_sums(matrix, terms, rows)
            total = sums if total is None else total + sums
        return total

    def one(self, row: int) -> float:
        self.evaluations += 1
        total = None
        for matrix, terms in self.parts:
            value = _row_sum(matrix, terms, row)
            total = value if total is None else total + value
        return total


class _Frontier:
    """Lazy greedy over one group of rows whose score is fl(h_i − c): h_i never grows as the selection
    grows (so a stale h bounds the fresh one) and the shift c is common to the group at each pick.

    ``all_h`` holds every group row's stale h (−inf once picked or while inactive); the frontier
    holds, in row order, the rows with h ≥ ``hlim``; every other row has h < hlim, so its score is
    at most fl(prev(hlim) − c), since rounding is monotone. A pick re-evaluates the frontier rows
    whose bound fl(h_stale − c) can reach the best fresh score, and refills the frontier from
    ``all_h`` (O(group)) when rows outside might reach it. Among fresh rows with the best score, the
    lowest row wins. ``scorer`` is a :class:`_Scorer` or anything called the same way.
    """

    def __init__(self, rows: np.ndarray, h: np.ndarray, scorer: _Scorer, size: int | None = None):
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

    def activate_all(self) -> None:
        """Parked rows become candidates again, with their stale h."""
        self._sync()
        parked = ~np.isnan(self.parked)
        self.all_h[parked] = self.parked[parked]
        self.parked[:] = np.nan
        self.hlim = np.inf


def _groups(values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Distinct ``values[rows]`` and the rows having each, in row order."""
    if not len(rows):
        return values[:0], []
    distinct, inverse = np.unique(values[rows], return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    return distinct, np.split(rows[order], np.cumsum(np.bincount(inverse, minlength=len(distinct)))[:-1])


@dataclass(frozen=True)
class TagsParams:
    """Hyperparameters of the TAGS greedy [R] (spec §1.10).

    phi_a, phi_b: φ(x) = (x + a)^b.
    align: used when a target is given: "none" (only report KL), "penalty", "hard" or "quota".
    lam: λ of the penalty, on E(S)/E(pool) − λ·KL(t ‖ p_S).
    eps: smoothing ε of p_S.
    kl_cap, kl_cap_start, kl_cap_decay: hard mode's cap δ_k = δ + (δ₀ − δ)·max(0, 1 − k/(decay·B)).
    """

    phi_a: float = 1e-6
    phi_b: float = 0.8
    align: Align = "none"
    lam: float = 1.0
    eps: float = 1e-3
    kl_cap: float = 0.1
    kl_cap_start: float = 1.0
    kl_cap_decay: float = 0.5

    def __post_init__(self) -> None:
        MigParams(phi_a=self.phi_a, phi_b=self.phi_b)  # validates φ
        if self.align not in ("none", "penalty", "hard", "quota"):
            raise ValueError(f"align must be 'none', 'penalty', 'hard' or 'quota', got {self.align!r}")
        if not (np.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"lam must be finite and >= 0, got {self.lam}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if not (self.kl_cap >= 0 and self.kl_cap_start >= self.kl_cap and self.kl_cap_decay > 0):
            raise ValueError("need kl_cap >= 0, kl_cap_start >= kl_cap and kl_cap_decay > 0")

    @property
    def phi_params(self) -> MigParams:
        return MigParams(phi_a=self.phi_a, phi_b=self.phi_b)

    def kl_cap_at(self, pick: int, budget: int) -> float:
        span = self.kl_cap_decay * max(budget, 1)
        return self.kl_cap + (self.kl_cap_start - self.kl_cap) * max(0.0, 1.0 - pick / span)


@dataclass(frozen=True)
class TagsSelection:
    """Result of :func:`select`; arrays are indexed by pick (k), node (V) or leaf (L).

    scores: what the greedy maximised at each pick (penalty: gain/E(pool) − λ·ΔKL; other modes: the
    gain); gains: the exact information gain E(S+i) − E(S); objective: E(S) after each pick;
    kl: KL(t ‖ p_S) after each pick (None without a target); top_nodes: the n_top nodes contributing
    most to each pick's gain (ties to the lowest node, −1 padded).
    """

    order: np.ndarray
    scores: np.ndarray
    gains: np.ndarray
    objective: np.ndarray
    kl: np.ndarray | None
    top_nodes: np.ndarray
    coverage: np.ndarray
    leaf_mass: np.ndarray
    align: str
    gain_evaluations: int
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------------
# selection


def _row_mass(A: sp.csr_array) -> np.ndarray:
    mass = np.zeros(A.shape[0])
    counts = np.diff(A.indptr)
    nonempty = counts > 0
    if nonempty.any():
        mass[nonempty] = np.add.reduceat(A.data, A.indptr[:-1][nonempty])
    return mass


class _Run:
    """State shared by the lazy and the dense greedy: matrices, per-mode weights and the update rule."""

    def __init__(self, problem: TagsProblem, k: int, params: TagsParams, target):
        self.U = _canonical(problem.paths, name="paths")
        self.A = _canonical(problem.leaves, name="leaves")
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
        self.state = _State(self.V, self.L)
        self.mass = _row_mass(self.A)
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
        self.node_terms = _Terms(self.state, self.w, None, self.phi, params.eps)
        self.kl_now = kl_divergence(self.target, self.state.m, params.eps) if self.target is not None else 0.0
        if self.align == "penalty":
            column_totals = np.asarray(self.U.sum(axis=0)).ravel()
            e_pool = float(np.sum(self.w * (phi(column_totals, self.phi) - phi(np.zeros(self.V), self.phi))))
            self.e_scale = e_pool if e_pool > 0 else 1.0
            self.score_parts = (
                (self.U, _Terms(self.state, self.w / self.e_scale, None, self.phi, params.eps)),
                (self.A, _Terms(self.state, None, params.lam * self.target, self.phi, params.eps)),
            )
        if self.align in ("hard", "penalty"):
            self.pull_terms = _Terms(self.state, None, self.target, self.phi, params.eps)

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


def select(problem: TagsProblem, k: int, params: TagsParams = TagsParams(), target=None, *, n_top_nodes: int = 3) -> TagsSelection:
    """Greedy TAGS selection of k samples by lazy greedy; the modes are described in the module notes.

    Each pick takes the candidate of largest score, ties to the lowest row. Without ``target`` (or
    with ``params.align == "none"``, which only reports KL) the score is the exact gain
    E(S+i) − E(S); with a target (an (L,) distribution) ``params.align`` chooses penalty
    (score = gain/E(pool) − λ·ΔKL_i, ΔKL as :func:`delta_kl`), hard or quota. k ≥ N returns every row
    in greedy order; k = 0 an empty selection. Rows of zero quality or without grounded tags have
    zero gain and remain candidates (last, in aligned modes).
    """
    run = _Run(problem, k, params, target)
    order = np.empty(run.k, dtype=np.int64)
    scores = np.empty(run.k)
    info: dict = {}
    evaluations = 0
    grounded_masses = len(np.unique(run.mass_key[run.grounded]))
    if run.align in ("penalty", "hard") and grounded_masses > _MAX_MASS_GROUPS:
        # too many distinct row masses for one lazy frontier each: exact full re-scans instead
        order, scores, evaluations = _greedy_dense(run)
        info["dense_fallback"] = True
    elif run.align == "none":
        scorer = _Scorer((run.U, run.node_terms))
        frontier = _Frontier(np.arange(run.N), scorer(), scorer)
        for pick in range(run.k):
            scores[pick], order[pick] = frontier.best(pick, 0.0)
            frontier.remove(int(order[pick]))
            run.add(int(order[pick]))
        evaluations = scorer.evaluations
    elif run.align == "penalty":
        evaluations = _select_penalty(run, order, scores, info)
    elif run.align == "hard":
        evaluations = _select_hard(run, order, scores, info)
    else:
        evaluations = _select_quota(run, order, scores, info)
    return _finish(run, order, scores, evaluations, info, n_top_nodes)


def _append_ungrounded(run: _Run, order: np.ndarray, scores: np.ndarray, start: int) -> None:
    rest = run.ungrounded[: run.k - start]
    order[start : start + len(rest)] = rest
    scores[start : start + len(rest)] = 0.0
    for row in rest.tolist():
        run.add(row)


def _select_penalty(run: _Run, order, scores, info) -> int:
    scorer = _Scorer(*run.score_parts)
    masses, group_rows = _groups(run.mass_key, run.grounded)
    initial = scorer(run.grounded)
    position = np.empty(run.N, dtype=np.int64)
    position[run.grounded] = np.arange(len(run.grounded))
    frontiers = [_Frontier(rows, initial[position[rows]], scorer) for rows in group_rows]
    info["groups"] = len(frontiers)
    info["e_scale"] = run.e_scale
    owner = np.empty(run.N, dtype=np.int64)
    for g, rows in enumerate(group_rows):
        owner[rows] = g
    n_picks = min(run.k, len(run.grounded))
    for pick in range(n_picks):
        best, best_row = -np.inf, -1
        for g, frontier in enumerate(frontiers):
            score, row = frontier.best(pick, run.shift(float(masses[g])))
            if row >= 0 and (score > best or (score == best and row < best_row)):
                best, best_row = score, row
        order[pick], scores[pick] = best_row, best
        frontiers[owner[best_row]].remove(best_row)
        run.add(best_row)
    _append_ungrounded(run, order, scores, n_picks)
    info["refills"] = sum(f.refills for f in frontiers)
    return scorer.evaluations


def _dkl(run: _Run, pulls: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """ΔKL of ``rows`` from their pulls Σ t·ln(1 + a/(m + ε)): fl(ln(1 + s/(M + εL)) − pull)."""
    return run.shifts(rows) - pulls


def _row_digest(columns: np.ndarray, values: np.ndarray, offsets: np.ndarray, counts: np.ndarray) -> np.ndarray:
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


def _identical_rows(matrix: sp.csr_array, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classes of exactly identical rows (same columns, same values) among ``rows`` (ascending):
    each row's class and each class's first row. Rows are hashed, then checked entry by entry
    against the first row of their hash; a row that differs (a collision) gets a class of its own."""
    rows = np.asarray(rows, dtype=np.int64)
    columns, values, offsets, counts = _entries(matrix, rows)
    _, first, classes = np.unique(_row_digest(columns, values, offsets, counts), return_index=True, return_inverse=True)  # first: the lowest row of each hash
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


class _ClassPulls:
    """Pulls Σ_ℓ t_ℓ·ln(1 + a_iℓ/(m_ℓ + ε)), memoised per class of identical leaf rows (whose row sums
    are identical): ``known`` is the latest value of each class (an upper bound of its pull from then
    on, since pulls never grow), ``stamp`` the pick it was computed at (the caller sets ``pick``).
    Row ``dead`` (= N) stands for no row: its pull is −inf."""

    def __init__(self, run: _Run, rows: np.ndarray):
        self.A, self.terms = run.A, run.pull_terms
        classes, self.lead = _identical_rows(run.A, rows)
        n_classes = len(self.lead)
        self.dead = run.N
        self.cls = np.full(run.N + 1, n_classes, dtype=np.int64)
        self.cls[rows] = classes
        self.known = np.full(n_classes + 1, -np.inf)
        self.stamp = np.full(n_classes + 1, np.iinfo(np.int64).max, dtype=np.int64)
        self.pick = 0
        self.evaluations = 0
        self.refresh_classes(np.arange(n_classes))

    def refresh_classes(self, classes: np.ndarray) -> None:
        self.known[classes] = _row_sums(self.A, self.terms, self.lead[classes])
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
            self.known[c] = _row_sum(self.A, self.terms, int(self.lead[c]))
            self.stamp[c] = self.pick
            self.evaluations += 1
        return float(self.known[c])

    def bound(self, rows: np.ndarray) -> np.ndarray:
        """Remembered pulls of ``rows``: upper bounds, exact where fresh."""
        return self.known[self.cls[rows]]

    def fresh(self, rows: np.ndarray) -> np.ndarray:
        return self.stamp[self.cls[rows]] == self.pick


class _GainMemo:
    """Every row's latest gain (``h``; −inf once picked, and for the row ``dead`` = N that stands for no
    row: an upper bound of its gain from then on) and the pick it was computed at (``stamp``)."""

    def __init__(self, scorer: _Scorer, n_rows: int, rows: np.ndarray, pick: int = 0):
        self.scorer = scorer
        self.h = np.full(n_rows + 1, -np.inf)
        self.stamp = np.full(n_rows + 1, -1, dtype=np.int64)
        self.refresh(rows, pick)

    def refresh(self, rows: np.ndarray, pick: int) -> np.ndarray:
        self.h[rows] = values = self.scorer(rows)
        self.stamp[rows] = pick
        return values


class _GaveUp(Exception):
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
    return tuple(np.insert(x, at, y) for x, y in zip(a, b))


class _PullOrderedGain:
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

    def __init__(self, rows: np.ndarray, gains: _GainMemo, pulls: _ClassPulls):
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
        raises :class:`_GaveUp` once more than ``give_up`` rows were refreshed without a feasible one."""
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
                raise _GaveUp
        if best == -np.inf or best < floor:
            return -np.inf, -1
        return best, int(rows[gains.h[rows] == best].min())


def _select_hard(run: _Run, order, scores, info) -> int:
    gain_scorer = _Scorer((run.U, run.node_terms))
    rows = run.grounded
    n_picks = min(run.k, len(rows))
    if n_picks == 0:
        _append_ungrounded(run, order, scores, 0)
        info["fallback_picks"] = 0
        return 0
    masses, group_rows = _groups(run.mass_key, rows)
    owner = np.empty(run.N, dtype=np.int64)
    for g, g_rows in enumerate(group_rows):
        owner[g_rows] = g
    pulls = _ClassPulls(run, rows)
    gains = _GainMemo(gain_scorer, run.N, rows)
    kl_frontiers = [_Frontier(g_rows, pulls.bound(g_rows), pulls) for g_rows in group_rows]
    searches = [_PullOrderedGain(g_rows, gains, pulls) for g_rows in group_rows]
    fallbacks = 0
    for pick in range(n_picks):
        pulls.pick = pick
        room = run.params.kl_cap_at(pick, run.k) - run.kl_now
        shifts = [run.shift(float(mass)) for mass in masses]  # as run.shifts computes them

        def least_dkl() -> tuple[float, int]:
            """The least ΔKL (lazily, per mass group), as (−ΔKL, row)."""
            least, least_row = -np.inf, -1
            for g, frontier in enumerate(kl_frontiers):
                s, r = frontier.best(pick, shifts[g])
                frontier.shrink()
                if r >= 0 and (s > least or (s == least and r < least_row)):
                    least, least_row = s, r
            return least, least_row

        def search(give_up: int | None) -> tuple[float, int]:
            score, row = -np.inf, -1
            for g, group_search in enumerate(searches):
                s, r = group_search.best(pick, shifts[g], room, floor=score, give_up=give_up)
                if r >= 0 and (s > score or (s == score and r < row)):
                    score, row = s, r
            return score, row

        least = None
        try:
            # by gain, in each group's pull order; when many rows turn out infeasible, the least ΔKL
            # tells whether any row is feasible (else the search would have to look at all of them)
            score, row = search(_GIVE_UP)
        except _GaveUp:
            least = least_dkl()
            score, row = search(None) if -least[0] <= room else (-np.inf, -1)
        if row >= 0:
            dkl = float(shifts[owner[row]] - pulls.one(row))
        else:
            fallbacks += 1
            least_value, row = least if least is not None else least_dkl()
            dkl = -least_value
            score = float(gain_scorer.one(row))
        order[pick], scores[pick] = row, score
        gains.h[row] = -np.inf
        kl_frontiers[owner[row]].remove(row)
        run.add(row)
        run.kl_now += dkl
    _append_ungrounded(run, order, scores, n_picks)
    info["fallback_picks"] = fallbacks
    info["merges"] = sum(s.merges for s in searches)
    info["pull_evaluations"] = pulls.evaluations
    return gain_scorer.evaluations + pulls.evaluations


def _quota_setup(run: _Run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    primary = primary_leaves(run.A)
    capacity = np.bincount(primary[primary >= 0], minlength=run.L)
    quotas = leaf_quotas(min(run.k, len(run.grounded)), run.target, capacity)
    return primary, capacity, quotas


def _select_quota(run: _Run, order, scores, info) -> int:
    scorer = _Scorer((run.U, run.node_terms))
    primary, _, quotas = _quota_setup(run)
    rows = run.grounded
    frontier = _Frontier(rows, scorer(rows), scorer)
    by_leaf = _groups(primary, rows)
    rows_of_leaf = dict(zip(by_leaf[0].tolist(), by_leaf[1]))
    for leaf, leaf_rows in rows_of_leaf.items():
        if quotas[leaf] == 0:
            frontier.deactivate(leaf_rows)
    used = np.zeros(run.L, dtype=np.int64)
    global_fill = False
    n_picks = min(run.k, len(rows))
    for pick in range(n_picks):
        score, row = frontier.best(pick, 0.0)
        if row < 0 and not global_fill:
            global_fill = True
            frontier.activate_all()
            info["global_fill_from"] = pick
            score, row = frontier.best(pick, 0.0)
        order[pick], scores[pick] = row, score
        frontier.remove(row)
        run.add(row)
        leaf = primary[row]
        used[leaf] += 1
        if not global_fill and used[leaf] == quotas[leaf]:
            frontier.deactivate(rows_of_leaf[leaf])
    _append_ungrounded(run, order, scores, n_picks)
    info["quotas"] = quotas
    info["primary_leaf_counts"] = used
    return scorer.evaluations


def _finish(run: _Run, order, scores, evaluations, info, n_top_nodes) -> TagsSelection:
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


def _replay_nodes(run: _Run, order: np.ndarray, n_top: int):
    """Each pick's exact gain, E(S) after it and its top contributing nodes, recomputed after the loop."""
    n_picks = len(order)
    nodes, values, offsets, counts = _entries(run.U, order)
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


def _replay_kl(run: _Run, order: np.ndarray) -> np.ndarray:
    """KL(t ‖ p_S) after each pick: Σ t ln t − Σ_ℓ t_ℓ ln(m_ℓ + ε) + ln(M + εL), with running m and M."""
    t, eps, n_picks = run.target, run.params.eps, len(order)
    if not n_picks:
        return np.empty(0)
    leaves, values, _, counts = _entries(run.A, order)
    picks = np.repeat(np.arange(n_picks), counts)
    before, after = _running_before(leaves, values, run.L)
    change = t[leaves] * (np.log(after + eps) - np.log(before + eps))
    pulled = np.cumsum(np.bincount(picks, weights=change, minlength=n_picks))
    M = np.cumsum(run.mass[order])
    positive = t > 0
    constant = float(np.sum(t[positive] * np.log(t[positive]))) - float(np.log(eps))  # Σ t ln t − Σ t ln ε
    return constant - pulled + np.log(M + eps * run.L)


# ---------------------------------------------------------------------------------------------------------------------
# reference


def select_dense(problem: TagsProblem, k: int, params: TagsParams = TagsParams(), target=None) -> np.ndarray:
    """Greedy with every candidate's score recomputed at every pick (O(k·nnz)): a reference for :func:`select`.

    Same scores, same row sums and the same rules as :func:`select`, without any laziness or
    grouping. Returns the picked rows in order.
    """
    return _greedy_dense(_Run(problem, k, params, target))[0]


def _greedy_dense(run: _Run) -> tuple[np.ndarray, np.ndarray, int]:
    """Picked rows, their scores (as :func:`select` reports them) and the row evaluations made."""
    params, align = run.params, run.align
    order = np.empty(run.k, dtype=np.int64)
    scores = np.empty(run.k)
    picked = np.zeros(run.N, dtype=bool)
    deferred = align != "none"
    candidates_all = run.grounded if deferred else np.arange(run.N)
    if align == "quota":
        primary, _, quotas = _quota_setup(run)
        used = np.zeros(run.L, dtype=np.int64)
        global_fill = False
    n_picks = min(run.k, len(candidates_all))
    evaluations = 0
    for pick in range(n_picks):
        rows = candidates_all[~picked[candidates_all]]
        evaluations += len(rows)
        if align == "none":
            values = _row_sums(run.U, run.node_terms, rows)
        elif align == "penalty":
            values = _Scorer(*run.score_parts)(rows) - run.shifts(rows)
        elif align == "hard":
            gains = _row_sums(run.U, run.node_terms, rows)
            dkl = _dkl(run, _row_sums(run.A, run.pull_terms, rows), rows)
            ok = dkl <= params.kl_cap_at(pick, run.k) - run.kl_now
            values = np.where(ok, gains, -np.inf) if ok.any() else -dkl
        else:
            values = _row_sums(run.U, run.node_terms, rows)
            if not global_fill:
                open_ = used[primary[rows]] < quotas[primary[rows]]
                if open_.any():
                    values = np.where(open_, values, -np.inf)
                else:
                    global_fill = True
        best = int(np.argmax(values))  # the first maximum: the lowest row
        row = int(rows[best])
        order[pick], scores[pick] = row, gains[best] if align == "hard" else values[best]
        picked[row] = True
        if align == "hard":
            run.kl_now += float(dkl[best])
        if align == "quota":
            used[primary[row]] += 1
        run.add(row)
    if deferred:
        _append_ungrounded(run, order, scores, n_picks)
    return order, scores, evaluations
