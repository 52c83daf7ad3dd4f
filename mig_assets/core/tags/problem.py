"""The TAGS problem (``shared/specs/tags.md`` §1.6–1.7, §1.9): leaf weights, path vectors, level weights
and the target distribution.

Notation: N samples, V tree nodes (leaves first: leaf ℓ is node ℓ, ℓ < L; see ``core/tags/tree.py``),
h(v) the level of node v (leaf = 1). Sample i has leaf weights a_iℓ (matrix A, N×L) and quality
q_i ≥ 0; its path vector is u_iv = q_i·Σ_ℓ a_iℓ·γ^{h(v)−h(ℓ)} over the leaves ℓ below or at v
(matrix U, N×V, root column left out by default). The greedy of ``core/tags/modes.py`` runs on the
:class:`TagsProblem` built here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from mig_assets.core.validation import first_few


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


def canonical_matrix(matrix, n_cols: int | None = None, name: str = "matrix") -> sp.csr_array:
    """``matrix`` as a canonical float64 CSR array (sorted, summed duplicates, no stored zeros), checked to
    be finite and non-negative (with ``n_cols`` columns when given); ValueError naming ``name`` otherwise."""
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
    A = canonical_matrix(leaf_matrix, name="leaf_matrix")
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
