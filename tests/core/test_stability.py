"""Warm re-selection: previous picks stay unless new data earns their slot, churn capped, constraints kept."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from mig_assets.core.mig.algorithm import select
from mig_assets.core.mig.constrained import warm_select
from mig_assets.core.mig.problem import MigParams, phi
from mig_assets.core.selection.constraints import Constraints, violations
from mig_assets.core.selection.stability import StabilitySpec, parse_stability, warm_reasons

PARAMS = MigParams()


def grown_pool(seed: int, n_old: int = 1500, n_new: int = 150, n_labels: int = 120):
    rng = np.random.default_rng(seed)
    n = n_old + n_new
    Y = sp.random_array((n, n_labels), density=0.04, rng=rng, format="csr", data_sampler=lambda size: rng.uniform(0.5, 20, size))
    return sp.csr_array(Y, dtype=np.float32), n_old


def information(Y, rows) -> float:
    return float(phi(np.asarray(Y[np.asarray(rows)].sum(axis=0), np.float64).ravel(), PARAMS).sum())


@pytest.mark.parametrize("seed", range(3))
def test_warm_reselection_keeps_old_picks_and_swaps_only_for_new_data(seed):
    Y, n_old = grown_pool(seed)
    k, spec = 100, StabilitySpec("warm", max_churn=0.05, margin=0.1)
    previous = select(Y[:n_old], k).order
    new_rows = np.arange(n_old, Y.shape[0])
    selection, warm, report = warm_select(Y, k, previous, new_rows, spec, None, PARAMS)
    rows = set(selection.order.tolist())
    added = rows - set(previous.tolist())
    assert len(rows) == k and added <= set(new_rows.tolist())  # no old sample displaced an old one
    assert len(added) == len(warm.swaps) <= 5  # churn within floor(0.05 * 100)
    assert report["selection"]["added_old_samples"] == 0 and report["selection"]["kept"] == k - len(added)
    fresh = select(Y, k).order
    assert report["fresh_greedy"]["added_old_samples"] == len(set(fresh.tolist()) - set(previous.tolist()) - set(new_rows.tolist()))
    # every swap earned its slot: the new sample's gain in S - i beat i's contribution by the margin
    members = set(previous.tolist())
    for removed, added_row, gain, loss in warm.swaps:
        without = members - {removed}
        assert information(Y, [*without, added_row]) - information(Y, list(without)) == pytest.approx(gain)
        assert information(Y, list(members)) - information(Y, list(without)) == pytest.approx(loss)
        assert gain > (1 + spec.margin) * loss
        members = without | {added_row}
    assert members == rows
    assert report["objective"] == pytest.approx(information(Y, selection.order), rel=1e-5)
    assert report["objective_loss_vs_fresh"] == pytest.approx((report["fresh_objective"] - report["objective"]) / report["fresh_objective"])


def test_no_new_data_or_a_large_margin_changes_nothing():
    Y, n_old = grown_pool(0)
    previous = select(Y, 80).order
    selection, warm, _ = warm_select(Y, 80, previous, np.empty(0, np.int64), StabilitySpec("warm"), None, PARAMS)
    assert set(selection.order.tolist()) == set(previous.tolist()) and not warm.swaps
    previous = select(Y[:n_old], 80).order
    selection, warm, _ = warm_select(Y, 80, previous, np.arange(n_old, Y.shape[0]), StabilitySpec("warm", margin=1e6), None, PARAMS)
    assert set(selection.order.tolist()) == set(previous.tolist()) and not warm.swaps


def test_slots_freed_by_samples_that_left_are_filled_with_exact_reasons():
    Y, n_old = grown_pool(1)
    previous = select(Y[:n_old], 60).order
    gone = previous[[0, 5, 9]]
    banned = np.zeros(Y.shape[0], bool)
    banned[gone] = True  # as if they had left the pool (or were excluded since)
    constraints = Constraints(Y.shape[0], banned=banned)
    spec = StabilitySpec("warm", max_churn=0.1, margin=0.1)
    selection, warm, _ = warm_select(Y, 60, previous, np.arange(n_old, Y.shape[0]), spec, constraints, PARAMS)
    assert not set(gone.tolist()) & set(selection.order.tolist()) and len(selection.order) == 60
    assert len(warm.filled) == 3 and len(warm.filled) + len(warm.swaps) <= 6  # fills count in the churn
    reasons = warm_reasons(warm, spec.margin, constraints.pinned)
    assert all(reasons[int(row)].startswith("filled a free slot") for row in warm.filled)
    for removed, added, _, _ in warm.swaps:
        assert reasons[removed].startswith("displaced by a new sample") and reasons[added].startswith("new sample")


def test_constraints_keep_holding_under_a_warm_start_and_an_infeasible_one_falls_back():
    Y, n_old = grown_pool(2)
    groups = np.arange(Y.shape[0]) % 4
    previous = select(Y[:n_old], 80).order
    new_rows = np.arange(n_old, Y.shape[0])
    pinned = new_rows[:2]
    constraints = Constraints(Y.shape[0], pinned=pinned, group_ids=groups, group_share=np.full(4, 0.3))
    assert (np.bincount(groups[previous], minlength=4) <= 23).all()  # the previous picks fit the caps of 24
    selection, warm, report = warm_select(Y, 80, previous, new_rows, StabilitySpec("warm", max_churn=0.1), constraints, PARAMS)
    assert "fallback" not in report and violations(constraints, selection.order, 80) == []
    assert set(pinned.tolist()) <= set(selection.order.tolist()) and len(warm.dropped) == 2  # room for the two pins
    assert set(warm.dropped.tolist()) == set(previous[-2:].tolist())  # the lowest-ranked previous picks
    assert warm_reasons(warm, 0.1, pinned)[int(warm.dropped[0])].startswith("dropped to make room")
    tight = Constraints(Y.shape[0], group_ids=groups, group_share=np.array([0.1, 0.3, 0.3, 0.3]))
    assert np.bincount(groups[previous], minlength=4)[0] > 8  # group 0's previous picks exceed its new cap
    selection, warm, report = warm_select(Y, 80, previous, new_rows, StabilitySpec("warm"), tight, PARAMS)
    assert report["fallback"].startswith("the previous picks cannot all stay: max_share")
    assert violations(tight, selection.order, 80) == []


@pytest.mark.parametrize(
    "value, message",
    [
        ({"mode": "cold"}, "expected fresh or warm"),
        ({"mode": "warm", "max_churn": 2}, r"a share in \[0, 1\]"),
        ({"mode": "warm", "margin": -1}, "expected >= 0"),
        ({"mode": "warm", "churn": 0.1}, r"unknown keys \['churn'\]"),
    ],
)
def test_bad_stability_specs_name_the_key(value, message):
    with pytest.raises(ValueError, match=message):
        parse_stability(value, "selections[0].stability")


def test_tags_warm_reselection_swaps_only_for_new_data_within_the_churn():
    from mig_assets.core.tags.constrained import warm_select as tags_warm_select
    from mig_assets.core.tags.information import objective
    from mig_assets.core.tags.modes import select as tags_select
    from mig_assets.core.tags.problem import TagsProblem
    from tests.core.test_constraints import tags_problem

    problem, _, _ = tags_problem(5, n_samples=600)
    n_old, k = 540, 60
    old = TagsProblem(problem.paths[:n_old], problem.leaves[:n_old], problem.node_weights, problem.levels)
    previous = tags_select(old, k).order
    selection, warm, report = tags_warm_select(problem, k, previous, np.arange(n_old, 600), StabilitySpec("warm", max_churn=0.1))
    added = set(selection.order.tolist()) - set(previous.tolist())
    assert added <= set(range(n_old, 600)) and len(added) == len(warm.swaps) <= 6
    assert report["selection"]["added_old_samples"] == 0
    members = set(previous.tolist())
    for removed, added_row, gain, loss in warm.swaps:  # each swap earned its slot on the information E(S)
        without = members - {removed}
        assert objective(problem, [*without, added_row]) - objective(problem, list(without)) == pytest.approx(gain)
        assert gain > 1.1 * loss
        members = without | {added_row}
    assert report["objective"] == pytest.approx(objective(problem, list(members)))
