"""One home for input validation of the algorithm functions (scikit-learn's ``check_array`` idea):
each check returns the array it accepted, and every error names the offending items."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NAMED_IN_ERRORS = 5  # offending items listed in an error message


def first_few(items: Sequence) -> str:
    """``[a, b, c, d, e] and N more``: the first offending items of an error message."""
    items = list(items)
    shown = ", ".join(repr(item) for item in items[:NAMED_IN_ERRORS])
    more = f" and {len(items) - NAMED_IN_ERRORS} more" if len(items) > NAMED_IN_ERRORS else ""
    return f"[{shown}]{more}"


def check_pool_size(n_samples: int) -> None:
    if n_samples == 0:
        raise ValueError("empty pool: there are no samples to select from")


def check_budget(n_samples: int, k: int) -> int:
    """The number of picks: ``k``, at most the pool size; the pool must not be empty and k >= 0."""
    check_pool_size(n_samples)
    if k < 0:
        raise ValueError(f"the budget k must be >= 0, got {k}")
    return min(int(k), n_samples)


def check_scores(scores, n_samples: int | None = None, *, non_negative: bool = False) -> np.ndarray:
    """Sample weights as a 1-D float64 array of ``n_samples`` finite values (>= 0 with ``non_negative``)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be a 1-D array (one per sample), got shape {scores.shape}")
    if n_samples is not None and len(scores) != n_samples:
        raise ValueError(f"expected {n_samples} scores (one per sample), got {len(scores)}")
    valid = np.isfinite(scores) & (scores >= 0) if non_negative else np.isfinite(scores)
    bad = np.flatnonzero(~valid)
    if len(bad):
        rule = "finite and >= 0" if non_negative else "finite"
        raise ValueError(f"scores must be {rule}; {len(bad)} are not, at sample indices {first_few(bad.tolist())} (values {first_few(scores[bad].tolist())})")
    return scores


def check_embeddings(embeddings) -> np.ndarray:
    """A numeric 2-D (samples × dimensions) array whose rows are all finite."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (samples × dimensions) array, got shape {embeddings.shape}")
    if embeddings.dtype.kind not in "biuf":
        raise ValueError(f"embeddings must be numeric, got dtype {embeddings.dtype}")
    bad = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
    if len(bad):
        raise ValueError(f"embeddings must be finite; offending rows {first_few(bad.tolist())}")
    return embeddings
