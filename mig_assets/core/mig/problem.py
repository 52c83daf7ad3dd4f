"""MIG's problem (``shared/specs/mig.md`` §2): its parameters, the information function φ, the label
graph W, the propagation P, the sample-label matrix X and the propagated vectors Y = X P.

Arithmetic follows the reference (float32 W, P, X, Y), so that its selections are reproduced exactly;
the greedy over Y is in :mod:`mig_assets.core.mig.algorithm`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from mig_assets.core.validation import (
    check_pool_size,
    check_scores,
    first_few,
)

_GRAPH_BLOCK_ELEMENTS = 1 << 24  # similarity entries computed per block (64 MiB of float32)


@dataclass(frozen=True)
class MigParams:
    """Hyperparameters of MIG; the defaults are the reference CLI's.

    tau: keep label similarities cos ≥ tau (inclusive), in [0, 1].
    prop_weight: scale of the off-diagonal (neighbour) weights before column normalisation, ≥ 0.
    norm: X_ij = q_i / |T_i| instead of q_i.
    phi: information function, "pow": φ(x) = (x + phi_a)^phi_b, or "exp": φ(x) = 1 − exp(−phi_alpha·x).
    gain: "gradient" (the reference's first-order gain Y_i · φ'(s)) or "exact"
        (the true marginal gain Σ_l φ(s_l + Y_il) − φ(s_l)).
    """

    tau: float = 0.9
    prop_weight: float = 1.0
    norm: bool = False
    phi: Literal["pow", "exp"] = "pow"
    phi_a: float = 1e-6
    phi_b: float = 0.8
    phi_alpha: float = 1.0
    gain: Literal["gradient", "exact"] = "gradient"

    def __post_init__(self) -> None:
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(
                f"tau must lie in [0, 1], got {self.tau}: with tau > 1 no label keeps its self-loop, P has empty columns and the reference computes NaN gains"
            )
        if not (np.isfinite(self.prop_weight) and self.prop_weight >= 0):
            raise ValueError(f"prop_weight must be finite and >= 0, got {self.prop_weight}")
        if self.phi == "pow":
            if not (self.phi_a > 0 and 0 < self.phi_b <= 1):
                raise ValueError(f"pow phi needs phi_a > 0 and 0 < phi_b <= 1 (concave, finite slope at 0), got phi_a={self.phi_a}, phi_b={self.phi_b}")
        elif self.phi == "exp":
            if not self.phi_alpha > 0:
                raise ValueError(f"exp phi needs phi_alpha > 0, got {self.phi_alpha}")
        else:
            raise ValueError(f"phi must be 'pow' or 'exp', got {self.phi!r}")
        if self.gain not in ("gradient", "exact"):
            raise ValueError(f"gain must be 'gradient' or 'exact', got {self.gain!r}")


def _float_array(x) -> np.ndarray:
    x = np.asarray(x)
    return x if x.dtype.kind == "f" else x.astype(np.float64)


def phi_function(params: MigParams, dtype) -> Callable[[np.ndarray], np.ndarray]:
    c = np.dtype(dtype).type
    if params.phi == "pow":
        a, b = c(params.phi_a), c(params.phi_b)
        return lambda x: np.power(x + a, b)
    one, rate = c(1), c(-params.phi_alpha)
    return lambda x: one - np.exp(rate * x)


def phi_prime_function(params: MigParams, dtype) -> Callable[[np.ndarray], np.ndarray]:
    # the constants are cast to x's dtype first, as the reference's float32 torch code does
    c = np.dtype(dtype).type
    if params.phi == "pow":
        a, b, exponent = c(params.phi_a), c(params.phi_b), c(params.phi_b - 1)
        return lambda x: b * np.power(x + a, exponent)
    alpha, rate = c(params.phi_alpha), c(-params.phi_alpha)
    return lambda x: alpha * np.exp(rate * x)


def phi(x, params: MigParams = MigParams()) -> np.ndarray:
    """Information function, elementwise in x's float dtype: (x + a)^b ("pow") or 1 − exp(−αx) ("exp")."""
    x = _float_array(x)
    return phi_function(params, x.dtype)(x)


def phi_prime(x, params: MigParams = MigParams()) -> np.ndarray:
    """Derivative of φ, elementwise in x's float dtype: b·(x + a)^(b−1) ("pow") or α·exp(−αx) ("exp")."""
    x = _float_array(x)
    return phi_prime_function(params, x.dtype)(x)


def build_label_graph(embeddings, tau: float = 0.9) -> sp.csr_array:
    """Label graph W (L×L float32): W_jl = cos(e_j, e_l) where it is ≥ tau, else 0; self-loops always kept.

    Rows of ``embeddings`` are L2-normalised first. The reference keeps self-loops only through
    cos(e_j, e_j) ≈ 1 ≥ tau; keeping them unconditionally is the same for every tau it can run with.
    Computed in row blocks, so memory stays O(block + nnz(W)) rather than L².
    """
    vectors = np.asarray(embeddings, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (labels × dimensions) array, got shape {vectors.shape}")
    unusable = np.flatnonzero(~np.isfinite(vectors).all(axis=1) | ~vectors.any(axis=1))
    if len(unusable):
        raise ValueError(f"embedding rows must be finite and non-zero; offending rows {first_few(unusable.tolist())}")
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    threshold = np.float32(tau)  # the reference compares float32 similarities with tau cast to float32
    n_labels = len(vectors)
    block = max(1, _GRAPH_BLOCK_ELEMENTS // max(n_labels, 1))
    rows, cols, weights = [], [], []
    for start in range(0, n_labels, block):
        similarity = vectors[start : start + block] @ vectors.T
        keep = similarity >= threshold
        keep[np.arange(len(similarity)), np.arange(start, start + len(similarity))] = True
        block_rows, block_cols = np.nonzero(keep)
        rows.append(block_rows + start)
        cols.append(block_cols)
        weights.append(similarity[block_rows, block_cols])
    if not rows:
        return sp.csr_array((n_labels, n_labels), dtype=np.float32)
    return sp.csr_array((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(n_labels, n_labels))


def propagation_matrix(W, prop_weight: float = 1.0) -> sp.csr_array:
    """Propagation matrix P (L×L float32): P̃ = diag(W) + prop_weight·offdiag(W), then P_jl = P̃_jl / Σ_m P̃_ml.

    Every column sums to 1; prop_weight = 0 gives P = I.
    """
    graph = sp.csr_array(W, dtype=np.float32).tocoo()
    graph.sum_duplicates()
    n_labels = graph.shape[0]
    weights = graph.data.copy()
    if len(weights) and not (np.isfinite(weights).all() and weights.min() >= 0):
        raise ValueError("W must have finite, non-negative weights")
    weights[graph.row != graph.col] *= np.float32(prop_weight)
    column_sums = np.zeros(n_labels, dtype=np.float32)
    np.add.at(column_sums, graph.col, weights)  # in row order, as the reference's column sum
    empty = np.flatnonzero(column_sums <= 0)
    if len(empty):
        raise ValueError(f"labels {first_few(empty.tolist())} have no positive weight in W (a self-loop is needed)")
    return sp.csr_array((weights / column_sums[graph.col], (graph.row, graph.col)), shape=graph.shape)


def sample_label_matrix(label_indptr, label_indices, scores, n_labels: int, norm: bool = False) -> sp.csr_array:
    """Sample matrix X (N×L float32): X_ij = q_i for each label j of sample i, or q_i / |T_i| with ``norm``.

    T_i is ``label_indices[label_indptr[i]:label_indptr[i+1]]`` (CSR layout). Repeated labels count in
    |T_i| but are assigned, not summed; a sample without labels gets an empty row. q_i / |T_i| is
    computed in float64 and then rounded to float32, as in the reference.
    """
    indptr = np.asarray(label_indptr, dtype=np.int64)
    indices = np.asarray(label_indices, dtype=np.int64)
    well_formed = indptr.ndim == 1 and len(indptr) > 0 and indptr[0] == 0 and indptr[-1] == len(indices)
    if not well_formed or (np.diff(indptr) < 0).any():
        raise ValueError("label_indptr must be non-decreasing offsets from 0 to len(label_indices)")
    if len(indices) and not 0 <= indices.min() <= indices.max() < n_labels:
        raise ValueError(f"label indices must lie in [0, {n_labels})")
    n_samples = len(indptr) - 1
    scores = check_scores(scores, n_samples, non_negative=True)
    counts = np.diff(indptr)
    values = np.divide(scores, counts, out=np.zeros_like(scores), where=counts > 0) if norm else scores
    rows = np.repeat(np.arange(n_samples), counts)
    X = sp.csr_array((np.ones(len(indices), dtype=np.float32), (rows, indices)), shape=(n_samples, n_labels))
    X.sum_duplicates()
    X.data = np.repeat(values.astype(np.float32), np.diff(X.indptr))
    return X


def propagate(X, P) -> sp.csr_array:
    """Propagated sample vectors Y = X P (N×L float32, CSR with sorted indices)."""
    Y = sp.csr_array(sp.csr_array(X, dtype=np.float32) @ sp.csr_array(P, dtype=np.float32))
    Y.sort_indices()
    return Y


@dataclass(frozen=True)
class MigProblem:
    """Everything the greedy selection runs on, built from labelled, scored samples."""

    labels: list[str]  # label universe; column j of X, Y ↔ labels[j]
    graph: sp.csr_array  # W
    propagation: sp.csr_array  # P
    samples: sp.csr_array  # X
    propagated: sp.csr_array  # Y = X P


def build_problem(
    label_indptr,
    label_ids,
    vocabulary: Sequence[str],
    scores,
    embed_labels: Callable[[list[str]], np.ndarray],
    params: MigParams = MigParams(),
) -> MigProblem:
    """Build W, P, X and Y for samples whose labels are ``vocabulary[label_ids[label_indptr[i]:label_indptr[i+1]]]``.

    The label universe is the code-point-sorted set of labels that occur (as the reference's
    ``sorted(set(...))``); ``embed_labels(universe)`` must return one embedding row per label, in order.
    """
    n_samples = len(label_indptr) - 1
    check_pool_size(n_samples)
    ids = np.asarray(label_ids, dtype=np.int64)
    if len(ids) and not 0 <= ids.min() <= ids.max() < len(vocabulary):
        raise ValueError(f"label ids must lie in [0, {len(vocabulary)})")
    used_ids = np.flatnonzero(np.bincount(ids, minlength=len(vocabulary)))
    used_names = [vocabulary[i] for i in used_ids.tolist()]
    if len(set(used_names)) != len(used_names):
        raise ValueError("vocabulary must not repeat a label")
    by_name = sorted(range(len(used_names)), key=used_names.__getitem__)
    labels = [used_names[i] for i in by_name]
    column_of_id = np.full(len(vocabulary), -1, dtype=np.int64)
    column_of_id[used_ids[by_name]] = np.arange(len(by_name))
    columns = column_of_id[ids]

    embeddings = np.asarray(embed_labels(labels), dtype=np.float32) if labels else np.zeros((0, 1), np.float32)
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(f"embed_labels returned shape {embeddings.shape} for {len(labels)} labels")
    W = build_label_graph(embeddings, params.tau)
    P = propagation_matrix(W, params.prop_weight)
    X = sample_label_matrix(label_indptr, columns, scores, len(labels), params.norm)
    return MigProblem(labels=labels, graph=W, propagation=P, samples=X, propagated=propagate(X, P))


def embedding_lookup(label_names: Sequence[str], label_embeddings) -> Callable[[list[str]], np.ndarray]:
    """An ``embed_labels`` for :func:`build_problem` that looks labels up in a table (row r ↔ label_names[r]).

    Asking for labels that have no row raises ValueError naming them. ``label_embeddings`` may be a
    memory-mapped array: only the requested rows are read.
    """
    if len(label_names) != len(label_embeddings):
        raise ValueError(f"{len(label_names)} label names but {len(label_embeddings)} embedding rows")
    row_of = {name: row for row, name in enumerate(label_names)}

    def embed(labels: list[str]) -> np.ndarray:
        missing = [label for label in labels if label not in row_of]
        if missing:
            raise ValueError(f"{len(missing)} label(s) have no embedding: {first_few(missing)}")
        return np.asarray(label_embeddings[[row_of[label] for label in labels]], dtype=np.float32)

    return embed


def propagated_matrix(Y) -> sp.csr_array:
    Y = sp.csr_array(Y, dtype=np.float32)
    if not Y.has_canonical_format:
        Y = Y.copy()
        Y.sum_duplicates()
    if len(Y.data) and not (np.isfinite(Y.data).all() and Y.data.min() >= 0):
        raise ValueError("Y must be finite and non-negative (gains must not grow as s grows)")
    return Y
