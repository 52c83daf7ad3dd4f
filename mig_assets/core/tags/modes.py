"""TAGS selection (``shared/specs/tags.md`` §1.8–1.9): greedy by exact marginal gain of E(S) (see
``core/tags/information.py``), run lazily, without a target or in one of the aligned modes.

Aligned modes [R] take a target leaf distribution t (``target_distribution``) and the
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
      kept sorted by stale pull with blocks of stale-gain maxima (``PullOrderedGain``), so a
      pick looks at the rows that might be feasible, best stale gain first, whatever θ_k does; the
      least ΔKL comes from a lazy frontier on the pull. Pulls are memoised per class of identical
      leaf rows (same terms, same sum).
  quota: greedy on E among rows whose primary leaf (largest a_iℓ) has quota left, quotas
      B_ℓ = round(B·t_ℓ) by largest remainder, capped by the rows available and redistributed;
      then (only if quotas cannot absorb the budget) greedy over all rows.
In aligned modes, samples without a grounded tag (s_i = 0) come last, in row order, so that
zero-information rows never displace grounded ones.
"""

from __future__ import annotations

import numpy as np

from mig_assets.core.tags.dense import greedy_dense
from mig_assets.core.tags.greedy import GreedyRun, append_ungrounded, finish_selection, quota_setup
from mig_assets.core.tags.hard_search import HardSearch
from mig_assets.core.tags.information import Scorer
from mig_assets.core.tags.lazy import Frontier, groups_by_value
from mig_assets.core.tags.params import TagsParams, TagsSelection
from mig_assets.core.tags.problem import TagsProblem

_MAX_MASS_GROUPS = 64  # more distinct row masses than this: aligned modes re-scan instead of lazy greedy


def select(problem: TagsProblem, k: int, params: TagsParams = TagsParams(), target=None, *, n_top_nodes: int = 3) -> TagsSelection:
    """Greedy TAGS selection of k samples by lazy greedy; the modes are described in the module notes.

    Each pick takes the candidate of largest score, ties to the lowest row. Without ``target`` (or
    with ``params.align == "none"``, which only reports KL) the score is the exact gain
    E(S+i) − E(S); with a target (an (L,) distribution) ``params.align`` chooses penalty
    (score = gain/E(pool) − λ·ΔKL_i, ΔKL as ``delta_kl``), hard or quota. k ≥ N returns every row
    in greedy order; k = 0 an empty selection. Rows of zero quality or without grounded tags have
    zero gain and remain candidates (last, in aligned modes).
    """
    run = GreedyRun(problem, k, params, target)
    order = np.empty(run.k, dtype=np.int64)
    scores = np.empty(run.k)
    info: dict = {}
    evaluations = 0
    grounded_masses = len(np.unique(run.mass_key[run.grounded]))
    if run.align in ("penalty", "hard") and grounded_masses > _MAX_MASS_GROUPS:
        # too many distinct row masses for one lazy frontier each: exact full re-scans instead
        order, scores, evaluations = greedy_dense(run)
        info["dense_fallback"] = True
    elif run.align == "none":
        scorer = Scorer((run.U, run.node_terms))
        frontier = Frontier(np.arange(run.N), scorer(), scorer)
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
    return finish_selection(run, order, scores, evaluations, info, n_top_nodes)


def _select_penalty(run: GreedyRun, order, scores, info) -> int:
    scorer = Scorer(*run.score_parts)
    masses, group_rows = groups_by_value(run.mass_key, run.grounded)
    initial = scorer(run.grounded)
    position = np.empty(run.N, dtype=np.int64)
    position[run.grounded] = np.arange(len(run.grounded))
    frontiers = [Frontier(rows, initial[position[rows]], scorer) for rows in group_rows]
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
    append_ungrounded(run, order, scores, n_picks)
    info["refills"] = sum(f.refills for f in frontiers)
    return scorer.evaluations


def _select_hard(run: GreedyRun, order, scores, info) -> int:
    rows = run.grounded
    n_picks = min(run.k, len(rows))
    if n_picks == 0:
        append_ungrounded(run, order, scores, 0)
        info["fallback_picks"] = 0
        return 0
    search = HardSearch(run, rows)
    for pick in range(n_picks):
        search.begin(pick)
        row, score, dkl = search.best(pick)
        order[pick], scores[pick] = row, score
        search.remove(row)
        run.add(row)
        run.kl_now += dkl
    append_ungrounded(run, order, scores, n_picks)
    info["fallback_picks"] = search.fallbacks
    info["merges"] = sum(s.merges for s in search.searches)
    info["pull_evaluations"] = search.pulls.evaluations
    return search.evaluations


def _select_quota(run: GreedyRun, order, scores, info) -> int:
    scorer = Scorer((run.U, run.node_terms))
    primary, quotas = quota_setup(run)
    rows = run.grounded
    frontier = Frontier(rows, scorer(rows), scorer)
    by_leaf = groups_by_value(primary, rows)
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
    append_ungrounded(run, order, scores, n_picks)
    info["quotas"] = quotas
    info["primary_leaf_counts"] = used
    return scorer.evaluations
