"""Selection budgets: a count, a fraction of the pool, or a token budget."""

from __future__ import annotations

import math

import numpy as np


def resolve_count(n_pool: int, count: int | None = None, fraction: float | None = None) -> int:
    """Number of picks: ``count``, or ``ceil(fraction * n_pool)``; exactly one must be given."""
    if (count is None) == (fraction is None):
        raise ValueError("give exactly one of a count or a fraction for the budget")
    if count is not None:
        if count < 0:
            raise ValueError(f"budget count must be >= 0, got {count}")
        return min(count, n_pool)
    assert fraction is not None
    if not 0 <= fraction <= 1:
        raise ValueError(f"budget fraction must be in [0, 1], got {fraction}")
    return min(math.ceil(fraction * n_pool), n_pool)


def token_prefix(order: np.ndarray, tokens: np.ndarray, token_budget: int) -> np.ndarray:
    """The longest prefix of the greedy ``order`` whose summed ``tokens`` stay within the budget."""
    if token_budget < 0:
        raise ValueError(f"token budget must be >= 0, got {token_budget}")
    cumulative = np.cumsum(tokens[order])
    return order[: int(np.searchsorted(cumulative, token_budget, side="right"))]


def picks_for_tokens(tokens: np.ndarray, token_budget: int) -> int:
    """An upper bound on the picks a token budget allows: the count of the cheapest samples that fit."""
    cumulative = np.cumsum(np.sort(tokens))
    return int(np.searchsorted(cumulative, token_budget, side="right"))
