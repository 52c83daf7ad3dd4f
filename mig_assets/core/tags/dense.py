"""The dense reference of the TAGS greedy: every candidate's score recomputed at every pick, with the
same scores, row sums and rules as the lazy greedy of ``core/tags/modes.py``, so the two must pick
identically."""

from __future__ import annotations

import numpy as np

from mig_assets.core.tags.greedy import GreedyRun, append_ungrounded, quota_setup
from mig_assets.core.tags.information import Scorer, row_sums
from mig_assets.core.tags.params import TagsParams
from mig_assets.core.tags.problem import TagsProblem


def select_dense(problem: TagsProblem, k: int, params: TagsParams = TagsParams(), target=None) -> np.ndarray:
    """Greedy with every candidate's score recomputed at every pick (O(k·nnz)): a reference for :func:`~mig_assets.core.tags.modes.select`.

    Same scores, same row sums and the same rules as :func:`~mig_assets.core.tags.modes.select`, without any laziness or
    grouping. Returns the picked rows in order.
    """
    return greedy_dense(GreedyRun(problem, k, params, target))[0]


def greedy_dense(run: GreedyRun) -> tuple[np.ndarray, np.ndarray, int]:
    """Picked rows, their scores (as :func:`~mig_assets.core.tags.modes.select` reports them) and the row evaluations made."""
    params, align = run.params, run.align
    order = np.empty(run.k, dtype=np.int64)
    scores = np.empty(run.k)
    picked = np.zeros(run.N, dtype=bool)
    deferred = align != "none"
    candidates_all = run.grounded if deferred else np.arange(run.N)
    if align == "quota":
        primary, quotas = quota_setup(run)
        used = np.zeros(run.L, dtype=np.int64)
        global_fill = False
    n_picks = min(run.k, len(candidates_all))
    evaluations = 0
    for pick in range(n_picks):
        rows = candidates_all[~picked[candidates_all]]
        evaluations += len(rows)
        if align == "none":
            values = row_sums(run.U, run.node_terms, rows)
        elif align == "penalty":
            values = Scorer(*run.score_parts)(rows) - run.shifts(rows)
        elif align == "hard":
            gains = row_sums(run.U, run.node_terms, rows)
            dkl = _dkl(run, row_sums(run.A, run.pull_terms, rows), rows)
            ok = dkl <= params.kl_cap_at(pick, run.k) - run.kl_now
            values = np.where(ok, gains, -np.inf) if ok.any() else -dkl
        else:
            values = row_sums(run.U, run.node_terms, rows)
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
        append_ungrounded(run, order, scores, n_picks)
    return order, scores, evaluations


def _dkl(run: GreedyRun, pulls: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """ΔKL of ``rows`` from their pulls Σ t·ln(1 + a/(m + ε)): fl(ln(1 + s/(M + εL)) − pull)."""
    return run.shifts(rows) - pulls
