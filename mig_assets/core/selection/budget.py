"""Selection budgets: a count, a fraction of the pool, or a token budget."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from mig_assets.core.selection.constraints import Constraints, InfeasibleConstraints

Run = TypeVar("Run")


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


def pinned_token_prefix(order: np.ndarray, tokens: np.ndarray, token_budget: int, pinned: np.ndarray) -> np.ndarray:
    """The picks of ``order`` a token budget keeps when ``pinned`` rows must stay: the pins' tokens
    count first, then the longest prefix of the other picks (in order) that fits in what is left;
    returned in ``order``'s order. Without pins, :func:`token_prefix`."""
    is_pin = np.isin(order, pinned)
    room = token_budget - int(tokens[order[is_pin]].sum())
    if room < 0:
        raise ValueError(f"the pinned picks' tokens exceed the token budget of {token_budget:,}")
    keep = is_pin.copy()
    keep[np.flatnonzero(~is_pin)[: len(token_prefix(order[~is_pin], tokens, room))]] = True
    return order[keep]


def fit_token_budget(
    run_at: Callable[[int], Run],
    order_of: Callable[[Run], np.ndarray],
    tokens: np.ndarray,
    token_budget: int,
    constraints: Constraints,
    start: int | None = None,
) -> Run:
    """A steered (constrained or warm) greedy under a token budget: the run at count m whose whole
    order fits. It starts at :meth:`Constraints.token_picks` (pins first, then the cheapest
    admissible samples), or at ``start`` when that is lower (a warm start's own count), keeps
    :func:`pinned_token_prefix`'s m picks of the run and, while m is short of the run, runs again
    at m (caps, minimums and churn are shares or counts of the picks, so they are enforced on the
    count that is kept; a count the max_share caps cannot fill comes down to one they can,
    :meth:`Constraints.fillable`). A run stuck after p picks (the constraints cannot
    complete it) is retried at p. Each step lowers the count, so it ends; every pick of the result
    fits and every constraint holds at its count. An InfeasibleConstraints on the way names the
    token budget and the count."""
    k = constraints.token_picks(tokens, token_budget)
    k = min(k, start) if start is not None else k
    while True:
        try:
            run = run_at(k)
        except InfeasibleConstraints as error:
            if error.picks_made is not None and len(constraints.pinned) <= error.picks_made < k:
                k = constraints.fillable(error.picks_made)
                continue
            raise InfeasibleConstraints(f"token budget of {token_budget:,} tokens, at {k} picks: {error}") from error
        order = order_of(run)
        kept = len(pinned_token_prefix(order, tokens, token_budget, constraints.pinned))
        if kept == len(order):
            return run
        k = constraints.fillable(kept)
