"""Warm re-selection of aligned TAGS: swaps judged by the objective the align mode's greedy maximises
(penalty: E(S)/E(pool) − λ·KL) and kept within the hard and quota rules."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from mig_assets.core.mig.problem import phi
from mig_assets.core.selection.constraints import Constraints
from mig_assets.core.selection.stability import SeparableObjective, StabilitySpec, warm_reselect
from mig_assets.core.tags.constrained import select_constrained, warm_select
from mig_assets.core.tags.greedy import GreedyRun
from mig_assets.core.tags.information import kl_divergence, leaf_quotas, primary_leaves
from mig_assets.core.tags.information import objective as information
from mig_assets.core.tags.modes import select
from mig_assets.core.tags.params import TagsParams
from mig_assets.core.tags.problem import TagsProblem, build_problem, target_distribution
from tests.core.test_tags_select import random_pool, single_tag_pool


def grown(seed: int, n_old: int = 2000, n_new: int = 100):
    """A pool of n_old samples grown by n_new (5%), 60 leaves, and its target."""
    A, q, parents, levels, target = random_pool(seed, n_samples=n_old + n_new, per_level=(60, 12, 3))
    problem = build_problem(A, q, parents, levels)
    old = TagsProblem(problem.paths[:n_old], problem.leaves[:n_old], problem.node_weights, problem.levels)
    return problem, old, target, np.arange(n_old, n_old + n_new)


def aligned_objective(problem, rows, target, params: TagsParams) -> float:
    """F(S) = E(S)/E(pool) − λ·KL(t ‖ p_S), from scratch."""
    e_pool = information(problem, np.arange(problem.n_samples))
    mass = np.asarray(problem.leaves[np.asarray(sorted(rows), np.int64)].sum(axis=0)).ravel()
    return information(problem, sorted(rows)) / e_pool - params.lam * kl_divergence(target, mass, params.eps)


@pytest.mark.parametrize("seed", range(2))
def test_penalty_warm_objective_is_within_half_a_percent_of_fresh_and_each_swap_earned_it(seed):
    problem, old, target, new_rows = grown(seed)
    params, k, spec = TagsParams(align="penalty", lam=1.0), 100, StabilitySpec("warm", max_churn=0.05, margin=0.1)
    previous = select(old, k, params, target).order
    selection, warm, report = warm_select(problem, k, previous, new_rows, spec, None, params, target)
    rows = set(selection.order.tolist())
    assert len(rows) == k and rows - set(previous.tolist()) <= set(new_rows.tolist()) and report["selection"]["added_old_samples"] == 0
    assert 1 <= len(warm.swaps) <= 5
    fresh = select(problem, k, params, target).order
    assert report["objective"] == pytest.approx(aligned_objective(problem, rows, target, params), rel=1e-9)
    assert report["fresh_objective"] == pytest.approx(aligned_objective(problem, fresh, target, params), rel=1e-9)
    assert report["objective_loss_vs_fresh"] <= 0.005
    members = set(previous.tolist())
    for removed, added, gain, loss in warm.swaps:  # exact changes of F, the margin beaten
        without = members - {removed}
        assert aligned_objective(problem, [*without, added], target, params) - aligned_objective(problem, without, target, params) == pytest.approx(
            gain, abs=1e-12
        )
        assert aligned_objective(problem, members, target, params) - aligned_objective(problem, without, target, params) == pytest.approx(loss, abs=1e-12)
        assert gain > loss + spec.margin * abs(loss)
        members = without | {added}
    assert members == rows


def off_target_growth(quality: float):
    """60 one-tag samples, 5 per leaf; the target wants leaves 0–5 only; one new sample of ``quality`` on leaf 11."""
    A, q, parents, levels, _ = single_tag_pool(per_leaf=5)
    target = target_distribution(np.where(np.arange(12) < 6, 1.0, 0.0), alpha=0.0)
    old = build_problem(A, q, parents, levels)
    grown_A = sp.csr_array(sp.vstack([A, sp.csr_array(np.eye(1, 12, 11))]))
    return old, build_problem(grown_A, np.append(q, quality), parents, levels), target


def test_a_swap_that_raises_information_but_worsens_the_aligned_objective_is_not_taken():
    params, k, spec = TagsParams(align="penalty", lam=1.0), 12, StabilitySpec("warm", max_churn=0.25, margin=0.1)
    old, problem, target = off_target_growth(quality=3.0)
    previous = select(old, k, params, target).order
    new = np.array([60])

    def fill(c: Constraints) -> np.ndarray:
        return select_constrained(problem, k, c, params, target, check_pins=False).order

    run = GreedyRun(problem, k, TagsParams(), None)
    by_information = warm_reselect(k, previous, new, Constraints(61), spec, fill, SeparableObjective([(run.U, lambda x: phi(x, run.phi), run.w)]))
    assert [(i, j) for i, j, _, _ in by_information.swaps] == [(0, 60)]  # information alone would take it ...
    swapped = [*(set(previous.tolist()) - {0}), 60]
    assert information(problem, swapped) > information(problem, previous)
    assert aligned_objective(problem, swapped, target, params) < aligned_objective(problem, previous, target, params)  # ... and lose F
    selection, warm, report = warm_select(problem, k, previous, new, spec, None, params, target)
    assert warm.swaps == [] and set(selection.order.tolist()) == set(previous.tolist())
    assert report["kl"] < 0.01
    # a new sample whose information outweighs the KL it costs still earns its slot
    _, richer, _ = off_target_growth(quality=10.0)
    selection, warm, _ = warm_select(richer, k, previous, new, spec, None, params, target)
    assert [j for _, j, _, _ in warm.swaps] == [60] and 60 in selection.order


@pytest.mark.parametrize("align", ["hard", "quota"])
def test_hard_and_quota_warm_swaps_keep_the_rule(align):
    problem, old, target, new_rows = grown(3)
    params, k = TagsParams(align=align, kl_cap=0.15, kl_cap_start=1.0), 150
    spec = StabilitySpec("warm", max_churn=0.1, margin=0.1)
    previous = select(old, k, params, target).order
    selection, warm, report = warm_select(problem, k, previous, new_rows, spec, None, params, target)
    assert warm.swaps and not warm.fallback
    before = np.asarray(sorted(set(warm.rows.tolist()) - {j for _, j, _, _ in warm.swaps} | {i for i, _, _, _ in warm.swaps}))
    after = selection.order
    assert report["objective"] == pytest.approx(information(problem, after))
    assert information(problem, after) > information(problem, before)
    if align == "quota":
        primary = primary_leaves(problem.leaves)
        grounded = np.flatnonzero(primary >= 0)
        quotas = leaf_quotas(min(k, len(grounded)), target, np.bincount(primary[grounded], minlength=len(target)))
        counts = [np.bincount(primary[rows][primary[rows] >= 0], minlength=len(target)) for rows in (before, after)]
        assert (counts[1] <= np.maximum(quotas, counts[0])).all()
    else:
        kl = [kl_divergence(target, np.asarray(problem.leaves[rows].sum(axis=0)).ravel(), params.eps) for rows in (before, after)]
        assert kl[1] <= max(params.kl_cap, kl[0]) + 1e-12
