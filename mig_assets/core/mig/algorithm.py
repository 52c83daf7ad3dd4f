"""MIG (Maximize Information Gain) data selection: the greedy over the problem of :mod:`~mig_assets.core.mig.problem`, on numpy/scipy arrays.

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

import numpy as np
import scipy.sparse as sp

from mig_assets.core.mig.problem import MigParams, build_problem, embedding_lookup, phi, phi_prime, phi_prime_function, propagated_matrix
from mig_assets.core.validation import (
    check_budget,
)

_FRONTIER_SIZE = 4096  # rows whose gains lazy greedy keeps at hand; a refill costs O(N)
_FRONTIER_SAMPLE = 1 << 16  # keys sampled to choose which rows a refill takes
_SCIPY_GATHER_ROWS = 64  # above this many rows, scipy's row indexing gathers them faster
_ONE_SEGMENT = np.zeros(1, dtype=np.intp)  # reduceat offsets for a single row


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
        self.derivative = phi_prime_function(params, np.float32)
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
