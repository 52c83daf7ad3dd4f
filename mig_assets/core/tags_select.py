"""TAGS selection (``shared/specs/tags.md`` §1.6–1.9): path vectors, tree-level information, lazy greedy,
KL alignment.

Notation: N samples, V tree nodes (leaves first: leaf ℓ is node ℓ, ℓ < L; see ``core/tree.py``),
h(v) the level of node v (leaf = 1). Sample i has leaf weights a_iℓ (matrix A, N×L) and quality
q_i ≥ 0; its path vector is u_iv = q_i·Σ_ℓ a_iℓ·γ^{h(v)−h(ℓ)} over the leaves ℓ below or at v
(matrix U, N×V, root column left out by default). For a selection S, x_v(S) = Σ_{i∈S} u_iv and the
information is E(S) = Σ_v β_{h(v)}·[φ(x_v) − φ(0)], φ(x) = (x + a)^b, the φ of ``core/mig.py``. E is
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
      KL(t ‖ p_{S+i}). Exact, but can cost O(N) per pick while the cap binds (see the benchmark).
  quota: greedy on E among rows whose primary leaf (largest a_iℓ) has quota left, quotas
      B_ℓ = round(B·t_ℓ) by largest remainder, capped by the rows available and redistributed;
      then (only if quotas cannot absorb the budget) greedy over all rows.
In aligned modes, samples without a grounded tag (s_i = 0) come last, in row order, so that
zero-information rows never displace grounded ones.

Floating point: every score is a sum of a row's terms by ``np.add.reduceat``, so a row scores the
same alone or in a batch (the approach of ``core/mig.py``); lazy greedy and the full re-scan of
:func:`select_dense` pick identically, and ties go to the lowest row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp

from mig_assets.core.mig import MigParams, _first_few, _phi_function, phi

_FRONTIER_SIZE = 4096  # rows per group whose stale scores the lazy greedy keeps at hand
_FRONTIER_SAMPLE = 1 << 16  # values sampled to choose the frontier limit at a refill
_BLOCK_ROWS = 1 << 16  # rows per block when every row is evaluated
_FEASIBLE_LIST = 4096  # hard mode lists the feasible rows when there are at most this many
_MAX_MASS_GROUPS = 64  # more distinct row masses than this: aligned modes re-scan instead of lazy greedy

Align = Literal["none", "penalty", "hard", "quota"]


# ---------------------------------------------------------------------------------------------------------------------
# inputs: quality, leaf weights, path vectors, level weights, targets


def rank_normalize(scores) -> np.ndarray:
    """Scores mapped to (0, 1] by rank: average rank (1-based, ties share it) / N (spec §1.7)."""
    scores = np.asarray(scores, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise ValueError(f"scores must be finite; offending indices {_first_few(bad.tolist())}")
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
            f"{_first_few(bad.tolist())} (values {_first_few(quality[bad].tolist())})"
        )
    return quality


def leaf_weights(leaf_indptr, leaf_ids, n_leaves: int, *, normalize: bool = True,
                 count_unassigned: bool = False) -> sp.csr_array:
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
    for _ in range(V):
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


def build_problem(leaf_matrix, quality, parents, levels, *, gamma: float = 0.5,
                  beta: str | Mapping[int, float] | np.ndarray = "uniform", include_root: bool = False) -> TagsProblem:
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
    lazy and full re-scans rank exactly alike (the approach of ``core/mig.py``).
    """
    rows = np.arange(matrix.shape[0]) if rows is None else rows
    if len(rows) > _BLOCK_ROWS:  # in blocks, to bound the temporaries
        return np.concatenate([_row_sums(matrix, terms, rows[start : start + _BLOCK_ROWS])
                               for start in range(0, len(rows), _BLOCK_ROWS)])
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
        self.phi = _phi_function(params, np.float64)  # mig.py's φ, built once
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
    ``all_h`` (O(group)) when rows outside might reach it. Among fresh rows with the best score (and
    eligible, where an eligibility test is given), the lowest row wins.
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
        self.ok = np.empty(0, dtype=bool)
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
        self.ok = np.ones(len(self.pos), dtype=bool)
        self.last = -1

    def best(self, pick: int, shift: float, eligible: Callable[[np.ndarray], np.ndarray] | None = None,
             surely_not: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[float, int]:
        """(score, row) of the best eligible row of the group at this pick, or (−inf, −1) if none."""
        if self.hlim == np.inf:
            self._refill(self.size)
        if eligible is not None:
            return self._best_eligible(pick, shift, eligible, surely_not)
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

    def _best_eligible(self, pick: int, shift: float, eligible: Callable[[np.ndarray], np.ndarray],
                       surely_not: Callable[[np.ndarray], np.ndarray] | None) -> tuple[float, int]:
        """:meth:`best` among the rows passing ``eligible`` (evaluated on fresh rows only): ineligible
        fresh rows are skipped, and rows are evaluated in batches of growing size, best bounds first,
        until an eligible fresh score is known. Rows for which the cheap ``surely_not`` holds are
        skipped without evaluation."""
        size, best, batch = self.size, -np.inf, 1
        skip = np.zeros(len(self.pos), dtype=bool)
        while True:
            bound = self.h - shift
            fresh = self.stamps == pick
            stale = ~fresh & ~skip & (self.h > -np.inf) & (bound >= best)
            if stale.any():
                targets = np.flatnonzero(stale)
                if surely_not is not None:
                    excluded = surely_not(self.group_rows[self.pos[targets]])
                    skip[targets[excluded]] = True
                    targets = targets[~excluded]
                    if not len(targets):
                        continue
                if best == -np.inf and len(targets) > batch:
                    if batch == 1:
                        targets = targets[[int(np.argmax(bound[targets]))]]
                    else:
                        targets = np.sort(targets[np.argpartition(-bound[targets], batch - 1)[:batch]])
                    batch *= 2
                rows = self.group_rows[self.pos[targets]]
                values = np.array([self.scorer.one(int(rows[0]))]) if len(rows) == 1 else self.scorer(rows)
                self.h[targets] = values
                self.stamps[targets] = pick
                self.ok[targets] = eligible(rows)
                if self.ok[targets].any():
                    best = max(best, float(np.max(values[self.ok[targets]] - shift)))
                continue
            if self.outside and (best == -np.inf or np.nextafter(self.hlim, -np.inf) - shift >= best):
                if best > -np.inf and shift == 0.0:
                    self._refill(size, hlim=best)  # exactly the rows that might reach the best
                else:
                    size *= 2
                    self._refill(size)
                skip = np.zeros(len(self.pos), dtype=bool)
                continue
            self.size = size  # eligible rows were this far down: start there at the next refill
            if best == -np.inf:
                return -np.inf, -1
            winner = int(np.flatnonzero(fresh & self.ok & (bound == best))[0])
            self.last = winner
            return best, int(self.group_rows[self.pos[winner]])

    def at_least(self, pick: int, shift: float, threshold: float, limit: int) -> np.ndarray | None:
        """The rows whose fresh score fl(h − c) is ≥ ``threshold``, ascending, or None when more than
        ``limit`` rows might be (their stale bounds reach it): then the caller searches otherwise."""
        size = self.size
        if self.hlim == np.inf:
            self._refill(size)
        while True:
            if self.outside and np.nextafter(self.hlim, -np.inf) - shift >= threshold:
                if size > 2 * limit:
                    return None
                size *= 2
                self._refill(size)
                continue
            bound = self.h - shift
            reach = bound >= threshold
            stale = np.flatnonzero(reach & (self.stamps != pick))
            if len(stale) > limit:
                return None
            if not len(stale):
                return self.group_rows[self.pos[np.flatnonzero(reach)]]
            self.h[stale] = self.scorer(self.group_rows[self.pos[stale]])
            self.stamps[stale] = pick

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
    align: Align = "penalty"
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


def _budget(n_samples: int, k: int) -> int:
    if n_samples == 0:
        raise ValueError("empty pool: there are no samples to select from")
    if k < 0:
        raise ValueError(f"the budget k must be >= 0, got {k}")
    return min(int(k), n_samples)


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
        self.k = _budget(self.N, k)
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


def select(problem: TagsProblem, k: int, params: TagsParams = TagsParams(), target=None, *,
           n_top_nodes: int = 3) -> TagsSelection:
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


class _RememberingScorer(_Scorer):
    """A scorer that keeps the latest value of every row it evaluates (``known``, −inf if never)."""

    def __init__(self, n_rows: int, *parts):
        super().__init__(*parts)
        self.known = np.full(n_rows, -np.inf)

    def __call__(self, rows=None):
        values = super().__call__(rows)
        self.known[slice(None) if rows is None else rows] = values
        return values

    def one(self, row: int) -> float:
        self.known[row] = value = super().one(row)
        return value


def _select_hard(run: _Run, order, scores, info) -> int:
    gain_scorer = _Scorer((run.U, run.node_terms))
    pull_scorer = _RememberingScorer(run.N, (run.A, run.pull_terms))
    rows = run.grounded
    gain_frontier = _Frontier(rows, gain_scorer(rows), gain_scorer)
    masses, group_rows = _groups(run.mass_key, rows)
    pulls = pull_scorer(rows)
    position = np.empty(run.N, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    kl_frontiers = [_Frontier(g_rows, pulls[position[g_rows]], pull_scorer) for g_rows in group_rows]
    owner = np.empty(run.N, dtype=np.int64)
    for g, g_rows in enumerate(group_rows):
        owner[g_rows] = g
    fallbacks = 0
    n_picks = min(run.k, len(rows))
    for pick in range(n_picks):
        room = run.params.kl_cap_at(pick, run.k) - run.kl_now
        # the least ΔKL first (lazily, per mass group): if even it exceeds the room, no row is feasible
        # and the gain search would have to look at every row to find out
        least, least_row = -np.inf, -1
        for g, frontier in enumerate(kl_frontiers):
            s, r = frontier.best(pick, run.shift(float(masses[g])))
            if r >= 0 and (s > least or (s == least and r < least_row)):
                least, least_row = s, r
        row = -1
        if -least <= room:
            # few feasible rows (a tight cap): list them in ΔKL order and take the largest gain;
            # many: search by gain, skipping infeasible rows
            found = [frontier.at_least(pick, run.shift(float(masses[g])), -room, _FEASIBLE_LIST)
                     for g, frontier in enumerate(kl_frontiers)]
            if all(rows_ is not None for rows_ in found) and sum(len(r) for r in found) <= _FEASIBLE_LIST:
                candidates = np.sort(np.concatenate(found))
                gains = gain_scorer(candidates)
                best = int(np.argmax(gains))  # the first maximum: the lowest row
                score, row = float(gains[best]), int(candidates[best])
            else:

                def feasible(candidates: np.ndarray) -> np.ndarray:
                    return _dkl(run, pull_scorer(candidates), candidates) <= room

                def surely_infeasible(candidates: np.ndarray) -> np.ndarray:
                    # pulls only shrink, so a remembered pull bounds ΔKL from below (rounding is monotone)
                    return _dkl(run, pull_scorer.known[candidates], candidates) > room

                score, row = gain_frontier.best(pick, 0.0, feasible, surely_infeasible)
        if row >= 0:
            dkl = float(_dkl(run, np.array([pull_scorer.one(row)]), np.array([row]))[0])
        else:
            fallbacks += 1
            row, dkl = least_row, -least
            score = float(gain_scorer.one(row))
        order[pick], scores[pick] = row, score
        gain_frontier.remove(row)
        kl_frontiers[owner[row]].remove(row)
        run.add(row)
        run.kl_now += dkl
    _append_ungrounded(run, order, scores, n_picks)
    info["fallback_picks"] = fallbacks
    return gain_scorer.evaluations + pull_scorer.evaluations


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
    return TagsSelection(order=order, scores=scores, gains=gains, objective=objective_, kl=kl, top_nodes=top_nodes,
                         coverage=run.state.x.copy(), leaf_mass=run.state.m.copy(), align=run.align,
                         gain_evaluations=int(evaluations), info=info)


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
