"""MIG (Maximize Information Gain) data selection: the algorithm, on numpy/scipy arrays.

Notation (``shared/specs/mig.md`` §2): N samples, L labels; sample i has the label list T_i and the
score q_i. W is the thresholded cosine label graph, P its column-normalised propagation matrix,
X the N×L sample-label matrix, Y = X P the propagated sample vectors. For a selected set S the
information is E(S) = Σ_l φ(s_l) with s = Σ_{i∈S} Y_i, and samples are picked greedily by gain.

Arithmetic follows the reference (float32 W, P, X, Y, s and φ'(s)), so that its selections are
reproduced exactly. A gradient gain is a sum of float32×float32 products, which are exact in
float64; they are summed in float64, and always in the same way for a given row, so that lazy
re-evaluation and exact duplicates rank exactly as a full re-scan would rank them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from mig_assets.core.validation import (
    check_budget,
    check_pool_size,
    check_scores,
    first_few,
)

_GRAPH_BLOCK_ELEMENTS = 1 << 24  # similarity entries computed per block (64 MiB of float32)
_FRONTIER_SIZE = 4096  # rows whose gains lazy greedy keeps at hand; a refill costs O(N)
_FRONTIER_SAMPLE = 1 << 16  # keys sampled to choose which rows a refill takes
_SCIPY_GATHER_ROWS = 64  # above this many rows, scipy's row indexing gathers them faster
_ONE_SEGMENT = np.zeros(1, dtype=np.intp)  # reduceat offsets for a single row


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


def _phi_prime_function(params: MigParams, dtype) -> Callable[[np.ndarray], np.ndarray]:
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
    return _phi_prime_function(params, x.dtype)(x)


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


@dataclass(frozen=True)
class MigSelection:
    """Result of :func:`select`; arrays are indexed by pick (k) or by label (L)."""

    order: np.ndarray  # (k,) int64 row indices of Y, in selection order
    gains: np.ndarray  # (k,) float64 gain of each pick when it was picked
    objective: np.ndarray  # (k,) float64 E(S) = Σ_l φ(s_l) after each pick
    coverage: np.ndarray  # (L,) final s = Σ_{i∈S} Y_i (float32 for "gradient", float64 for "exact")
    top_labels: np.ndarray  # (k, n_top_labels) int64 labels contributing most to each pick's gain, −1 padded
    gain_evaluations: int  # row gains computed: one per row up front, plus every lazy re-evaluation


class _GradientGain:
    """gain_i = Σ_l Y_il φ'(s_l); s and φ'(s) in float32 as in the reference, products summed in float64."""

    coverage_dtype = np.float32

    def __init__(self, n_labels: int, params: MigParams):
        self.params = params
        self.derivative = _phi_prime_function(params, np.float32)
        self.coverage = np.zeros(n_labels, dtype=np.float32)
        self.weights = self.derivative(self.coverage).astype(np.float64)

    def terms(self, labels: np.ndarray, values: np.ndarray) -> np.ndarray:
        return values * self.weights[labels]

    @staticmethod
    def terms_at(coverage: np.ndarray, values: np.ndarray, params: MigParams) -> np.ndarray:
        return values * phi_prime(coverage, params).astype(np.float64)

    def add(self, labels: np.ndarray, values: np.ndarray) -> None:
        updated = self.coverage[labels] + values
        self.coverage[labels] = updated
        self.weights[labels] = self.derivative(updated)


class _ExactGain:
    """gain_i = Σ_l φ(s_l + Y_il) − φ(s_l), in float64."""

    coverage_dtype = np.float64

    def __init__(self, n_labels: int, params: MigParams):
        self.params = params
        self.coverage = np.zeros(n_labels, dtype=np.float64)

    def terms(self, labels: np.ndarray, values: np.ndarray) -> np.ndarray:
        return self.terms_at(self.coverage[labels], values, self.params)

    @staticmethod
    def terms_at(coverage: np.ndarray, values: np.ndarray, params: MigParams) -> np.ndarray:
        return phi(coverage + values, params) - phi(coverage, params)

    def add(self, labels: np.ndarray, values: np.ndarray) -> None:
        self.coverage[labels] += values


GAIN_MODELS: dict[str, type[_GradientGain] | type[_ExactGain]] = {"gradient": _GradientGain, "exact": _ExactGain}


def _row_entries(Y: sp.csr_array, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The stored (label, value) entries of ``rows``, concatenated, with each row's offset and count."""
    if len(rows) > _SCIPY_GATHER_ROWS:
        picked = Y[rows]
        return picked.indices, picked.data, picked.indptr[:-1], np.diff(picked.indptr)
    starts = Y.indptr[rows]
    counts = Y.indptr[rows + 1] - starts
    offsets = np.cumsum(counts) - counts
    positions = np.arange(counts.sum()) + np.repeat(starts - offsets, counts)
    return Y.indices[positions], Y.data[positions], offsets, counts


def gain_of_row(Y: sp.csr_array, model: _GradientGain | _ExactGain, row: int) -> float:
    """Gain of one row, summed exactly as :func:`gains_of` sums it (``reduceat`` over the row's terms)."""
    entries = slice(Y.indptr[row], Y.indptr[row + 1])
    terms = model.terms(Y.indices[entries], Y.data[entries])
    return float(np.add.reduceat(terms, _ONE_SEGMENT)[0]) if len(terms) else 0.0


def gains_of(Y: sp.csr_array, model: _GradientGain | _ExactGain, rows: np.ndarray | None = None) -> np.ndarray:
    """Gains of ``rows`` of Y (all rows when None) in the model's current state.

    Every gain, initial or re-evaluated, is summed the same way, by ``np.add.reduceat``, whose
    result for a row depends only on that row's terms: a row gets the same gain in the same
    state whatever batch it is evaluated in, so stale gains stay exact upper bounds.
    """
    if rows is None:
        labels, values, offsets, counts = Y.indices, Y.data, Y.indptr[:-1], np.diff(Y.indptr)
    else:
        labels, values, offsets, counts = _row_entries(Y, rows)
    terms = model.terms(labels, values)
    if not len(terms):
        return np.zeros(len(counts))
    if counts.all():
        return np.add.reduceat(terms, offsets)
    sums = np.zeros(len(counts))
    nonempty = counts > 0
    sums[nonempty] = np.add.reduceat(terms, offsets[nonempty])
    return sums


class LazyFrontier:
    """Unpicked rows with their stale gains, for lazy greedy; keys are −gain, so lower is better.

    Stale gains are upper bounds of the current ones. The frontier holds the rows whose key is
    <= ``limit``, in row order, so ``argmin`` over its keys picks the max gain with ties going to
    the lowest row. Every other unpicked row has a key above ``limit`` (in ``all_keys``), so it
    cannot beat a frontier row whose fresh key is <= limit. ``stamps`` holds the pick at which each
    key was computed: a key is exact only during that pick. Picked rows get key +inf. When the
    frontier can no longer prove the best row, it is rebuilt from ``all_keys`` in O(N).
    """

    def __init__(
        self,
        gains: np.ndarray,
        evaluate: Callable[[np.ndarray], np.ndarray],
        evaluate_row: Callable[[int], float],
        size: int | None = None,
    ):
        self.evaluate, self.evaluate_row = evaluate, evaluate_row
        self.size = size or _FRONTIER_SIZE
        self.all_keys = -gains
        self.all_stamps = np.zeros(len(gains), dtype=np.int64)
        self.evaluations = len(gains)
        self.sample_stride = max(1, len(gains) // _FRONTIER_SAMPLE)
        self.rows = np.empty(0, dtype=np.int64)
        self.keys = np.empty(0)
        self.stamps = np.empty(0, dtype=np.int64)
        self.limit = -np.inf

    def pop_best(self, pick: int) -> tuple[int, float]:
        """Remove and return (row, gain) of the best row at this pick: max gain, then lowest row;
        (−1, nan) when every row is picked or discarded."""
        # Gains only shrink, so a row can only win if its stale key is at least as good as the best
        # fresh key. Re-evaluate the top row; then, while the top is stale, every stale row that is
        # at least as good as the best fresh key, in one batch.
        best_fresh = np.inf
        while True:
            best = int(self.keys.argmin()) if len(self.keys) else -1
            if self.limit == np.inf and (best < 0 or self.keys[best] == np.inf):
                return -1, float("nan")  # every row is picked or discarded
            if best < 0 or self.keys[best] > self.limit:
                self._refill()
            elif self.stamps[best] == pick:
                row, key = int(self.rows[best]), float(self.keys[best])
                self.keys[best] = np.inf
                return row, -key
            elif best_fresh == np.inf:
                best_fresh = self.keys[best] = -self.evaluate_row(int(self.rows[best]))
                self.stamps[best] = pick
                self.evaluations += 1
            else:
                stale = np.flatnonzero(self.keys <= best_fresh)
                stale = stale[self.stamps[stale] != pick]
                self.keys[stale] = -self.evaluate(self.rows[stale])
                self.stamps[stale] = pick
                self.evaluations += len(stale)
                best_fresh = min(best_fresh, self.keys[stale].min())

    def discard(self, rows: np.ndarray) -> None:
        """Take ``rows`` out for good (a constraint made them inadmissible): they get key +inf."""
        self.all_keys[rows] = np.inf
        positions = np.searchsorted(self.rows, rows)
        positions = positions[positions < len(self.rows)]
        self.keys[positions[np.isin(self.rows[positions], rows)]] = np.inf

    def _refill(self) -> None:
        """Put the frontier back and rebuild it from about the ``size`` best keys, and at least its best row."""
        self.all_keys[self.rows] = self.keys
        self.all_stamps[self.rows] = self.stamps
        # the limit is estimated from a strided sample of the keys (exact when N is small)
        sample = self.all_keys[:: self.sample_stride]
        rank = min(len(sample), max(1, self.size // self.sample_stride)) - 1
        limit = np.partition(sample, rank)[rank]
        if len(self.keys) and self.keys.min() < np.inf:
            limit = max(limit, self.keys.min())
        self.rows = np.flatnonzero(self.all_keys <= limit)
        self.keys = self.all_keys[self.rows]
        self.stamps = self.all_stamps[self.rows]
        self.limit = limit


def propagated_matrix(Y) -> sp.csr_array:
    Y = sp.csr_array(Y, dtype=np.float32)
    if not Y.has_canonical_format:
        Y = Y.copy()
        Y.sum_duplicates()
    if len(Y.data) and not (np.isfinite(Y.data).all() and Y.data.min() >= 0):
        raise ValueError("Y must be finite and non-negative (gains must not grow as s grows)")
    return Y


def select(Y, k: int, params: MigParams = MigParams(), *, n_top_labels: int = 3) -> MigSelection:
    """Greedy MIG selection of k rows of Y: the reference's picks, by lazy greedy.

    Each step picks argmax_i gain_i(s) over unpicked rows, ties to the lowest index, then s += Y_i.
    Gains never grow as s grows (Y ≥ 0, φ concave), so a stale gain bounds the current one and
    only rows whose stale gain could still win are re-evaluated (spec §2.5). With k ≥ N every row
    is returned, in greedy order (the reference crashes there); k = 0 gives an empty selection.
    Rows without labels have gain 0 and remain candidates. Y is used as float32.
    """
    Y = propagated_matrix(Y)
    n_samples, n_labels = Y.shape
    k = check_budget(n_samples, k)
    model = GAIN_MODELS[params.gain](n_labels, params)
    frontier = LazyFrontier(gains_of(Y, model), lambda rows: gains_of(Y, model, rows), lambda row: gain_of_row(Y, model, row))
    order = np.empty(k, dtype=np.int64)
    gains = np.empty(k, dtype=np.float64)
    for pick in range(k):
        row, gains[pick] = frontier.pop_best(pick)
        order[pick] = row
        entries = slice(Y.indptr[row], Y.indptr[row + 1])
        model.add(Y.indices[entries], Y.data[entries])
    objective, top_labels = replay(Y, order, model, n_top_labels)
    return MigSelection(order, gains, objective, model.coverage.copy(), top_labels, frontier.evaluations)


def replay(Y: sp.csr_array, order: np.ndarray, model: _GradientGain | _ExactGain, n_top_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """E(S) after each pick, and each pick's top contributing labels, recomputed after the greedy loop.

    Per label, a running sum in pick order and in the coverage dtype reproduces s exactly as the
    loop accumulated it, so each pick's terms are the ones its gain was computed from.
    """
    params, n_picks = model.params, len(order)
    labels, values, offsets, counts = _row_entries(Y, order)  # pick by pick, labels ascending
    picks = np.repeat(np.arange(n_picks), counts)
    # a stable sort keeps pick order within each label; 16-bit keys sort in linear time
    by_label = np.argsort(labels.astype(np.uint16) if Y.shape[1] <= 1 << 16 else labels, kind="stable")
    sorted_values = values[by_label].astype(model.coverage_dtype)
    after, before = np.empty_like(sorted_values), np.zeros_like(sorted_values)
    group_starts = np.flatnonzero(np.diff(labels[by_label], prepend=-1)).tolist()
    for start, stop in zip(group_starts, [*group_starts[1:], len(labels)]):
        np.cumsum(sorted_values[start:stop], out=after[start:stop])
        before[start + 1 : stop] = after[start : stop - 1]

    gained = phi(after.astype(np.float64), params) - phi(before.astype(np.float64), params)
    initial = float(phi(np.zeros(Y.shape[1]), params).sum())
    objective = initial + np.cumsum(np.bincount(picks[by_label], weights=gained, minlength=n_picks))

    terms = np.empty(len(labels))
    terms[by_label] = model.terms_at(before, sorted_values, params)
    top_labels = np.full((n_picks, n_top_labels), -1, dtype=np.int64)
    nonempty = counts > 0
    for rank in range(min(n_top_labels, int(counts.max(initial=0)))):
        # the first maximum of each pick's remaining terms: its largest, ties to the lowest label
        best = np.repeat(np.maximum.reduceat(terms, offsets[nonempty]), counts[nonempty])
        candidates = np.flatnonzero((terms == best) & (terms > -np.inf))
        first = candidates[np.diff(picks[candidates], prepend=-1) > 0]
        top_labels[picks[first], rank] = labels[first]
        terms[first] = -np.inf
    return objective, top_labels


def select_dense(Y, k: int, params: MigParams = MigParams(), *, gain_dtype=np.float64) -> np.ndarray:
    """Straightforward O(k·N·L) greedy on a dense Y, the reference's loop; a baseline to verify :func:`select`.

    Each step recomputes every gain and masks picked rows (rather than gathering the remaining
    rows, as the reference does; same result). ``gain_dtype=np.float32`` computes the gradient
    gains as the reference does, with a float32 GEMV; float64 has :func:`select`'s precision (only
    the summation order differs). Needs N×L memory. Returns the picked row indices, in order.
    """
    dense = propagated_matrix(Y).toarray().astype(gain_dtype, copy=False)
    n_samples, n_labels = dense.shape
    k = check_budget(n_samples, k)
    coverage = np.zeros(n_labels, dtype=np.float32 if params.gain == "gradient" else np.float64)
    remaining = np.ones(n_samples, dtype=bool)
    order = np.empty(k, dtype=np.int64)
    for pick in range(k):
        if params.gain == "gradient":
            gains = dense @ phi_prime(coverage, params).astype(gain_dtype)
        else:
            gains = (phi(coverage + dense, params) - phi(coverage, params)).sum(axis=1)
        gains[~remaining] = -np.inf
        row = int(np.argmax(gains))  # the first maximum: ties go to the lowest index
        order[pick] = row
        remaining[row] = False
        coverage += dense[row].astype(coverage.dtype)
    return order


def random_select(n_samples: int, k: int, seed: int = 42) -> np.ndarray:
    """The reference's random sampler: ``random.Random(seed).sample(range(N), k)``, as int64.

    The reference requires k < N; with k ≥ N every index is returned, in the order of
    ``random.Random(seed).sample(range(N), N)``.
    """
    k = check_budget(n_samples, k)
    return np.array(random.Random(seed).sample(range(n_samples), k), dtype=np.int64)


def mig_from_labels(
    label_lists: Sequence[Sequence[str]],
    scores,
    label_names: Sequence[str],
    label_embeddings,
    k: int,
    params: MigParams = MigParams(),
) -> tuple[MigSelection, list[str]]:
    """MIG end to end from each sample's (already valid) labels and score.

    Row r of ``label_embeddings`` is the vector of ``label_names[r]``; it may hold more labels than
    occur. Returns the selection and the label universe (``top_labels`` and ``coverage`` index it).
    """
    vocabulary: dict[str, int] = {}
    label_ids = [vocabulary.setdefault(label, len(vocabulary)) for labels in label_lists for label in labels]
    label_indptr = np.concatenate([[0], np.cumsum([len(labels) for labels in label_lists], dtype=np.int64)])
    problem = build_problem(label_indptr, label_ids, list(vocabulary), scores, embedding_lookup(label_names, label_embeddings), params)
    return select(problem.propagated, k, params), problem.labels
