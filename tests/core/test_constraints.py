"""Constraints inside the greedy: brute force on small pools, exactness on every budget, lazy = dense."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp

from mig_assets.core.mig import algorithm as mig
from mig_assets.core.mig.algorithm import select
from mig_assets.core.mig.constrained import select_constrained, select_dense_constrained
from mig_assets.core.mig.problem import MigParams, phi
from mig_assets.core.selection.constraints import Constraints, InfeasibleConstraints, violations

EXACT = MigParams(gain="exact")


def small_pool(seed: int, n_samples: int = 9, n_labels: int = 5):
    """A random non-negative Y, three groups, and three bounded labels carried by random rows."""
    rng = np.random.default_rng(seed)
    Y = sp.csr_array(rng.uniform(0.5, 3, size=(n_samples, n_labels)) * (rng.random((n_samples, n_labels)) < 0.5))
    groups = rng.permutation(np.arange(n_samples) % 3)
    carries = rng.random((n_samples, 3)) < 0.3
    carries[np.arange(n_samples), np.arange(n_samples) % 3] = True  # every label on a third of the rows at least
    return Y, groups, sp.csr_array(carries.astype(np.int64))


def objective(Y: sp.csr_array, rows, params: MigParams = EXACT) -> float:
    return float(phi(np.asarray(Y[list(rows)].sum(axis=0)).ravel() if len(rows) else np.zeros(Y.shape[1]), params).sum())


def feasible(c: Constraints, rows, k: int) -> bool:
    """Whether a set of k rows satisfies the constraints, checked directly from their definitions."""
    rows = np.asarray(sorted(rows), np.int64)
    if len(rows) != k or not set(c.pinned.tolist()) <= set(rows.tolist()) or c.banned[rows].any():
        return False
    if c.group_ids is not None and (np.bincount(c.group_ids[rows], minlength=len(c.group_share)) > np.floor(c.group_share * k + 1e-9)).any():
        return False
    if c.label_members is not None:
        counts = c.label_members.toarray()[rows].sum(axis=0)
        return bool(((counts >= c.label_min) & (counts <= c.label_max)).all())
    return True


def constraint_cases(groups, members, n_samples):
    banned = np.zeros(n_samples, bool)
    banned[[1, 4]] = True
    yield "pinned", Constraints(n_samples, pinned=np.array([7, 2]))
    yield "banned", Constraints(n_samples, banned=banned)
    yield "groups", Constraints(n_samples, group_ids=groups, group_share=np.array([0.4, 0.6, 0.5]), group_by="shard")
    yield "label_max", Constraints(n_samples, label_members=members, label_max=np.array([2, 3, 2]))
    yield "label_min", Constraints(n_samples, label_members=members, label_min=np.array([2, 1, 0]))
    yield (
        "all",
        Constraints(
            n_samples,
            pinned=np.array([0]),
            banned=banned,
            group_ids=groups,
            group_share=np.array([0.5, 0.5, 0.5]),
            label_members=members,
            label_min=np.array([1, 0, 1]),
            label_max=np.array([3, 2, 3]),
        ),
    )


@pytest.mark.parametrize("seed", range(4))
def test_brute_force_every_constraint_every_budget(seed):
    Y, groups, members = small_pool(seed)
    n = Y.shape[0]
    for name, c in constraint_cases(groups, members, n):
        returned = 0
        for k in range(1, n + 1):
            subsets = [s for s in itertools.combinations(range(n), k) if feasible(c, s, k)]
            try:
                picked = select_constrained(Y, k, c, EXACT)
            except InfeasibleConstraints:
                # exact refusals for pins, bans and caps; label bounds may refuse a feasible spec
                # only when a greedy order cannot reach it (minimums counted one pick per label)
                assert not subsets or name in ("label_min", "label_max", "all"), (name, k)
                continue
            assert subsets, f"{name} k={k}: a selection was returned where no feasible set exists"
            assert feasible(c, picked.order, k), (name, k, picked.order)
            assert violations(c, picked.order, k) == []
            np.testing.assert_array_equal(picked.order, select_dense_constrained(Y, k, c, EXACT))
            assert picked.objective[-1] == pytest.approx(objective(Y, picked.order))
            if name in ("pinned", "banned", "groups"):  # a (laminar) matroid: greedy >= OPT / 2
                assert picked.objective[-1] >= 0.5 * max(objective(Y, s) for s in subsets) - 1e-9
            returned += 1
        assert returned >= (1 if name == "all" else 3), f"{name}: too few budgets selected to test anything"


@pytest.mark.parametrize("seed", range(4))
def test_each_pick_is_the_best_candidate_that_can_still_be_completed(seed):
    """Under pins, bans and group caps, each pick is the best row whose addition can still be completed
    to a feasible set of the budget (found by brute force): a binding cap makes it take the next best."""
    Y, groups, _ = small_pool(seed, n_samples=8)
    banned = np.zeros(8, bool)
    banned[3] = True
    c = Constraints(8, pinned=np.array([5]), banned=banned, group_ids=groups, group_share=np.array([0.34, 0.5, 0.5]))
    for k in range(2, 7):
        try:
            order = select_constrained(Y, k, c, EXACT).order.tolist()
        except InfeasibleConstraints:
            assert not any(feasible(c, s, k) for s in itertools.combinations(range(8), k))
            continue
        assert order[0] == 5
        completions = [set(s) for s in itertools.combinations(range(8), k) if feasible(c, s, k)]
        for t in range(1, k):
            prefix = set(order[:t])
            extendable = [r for r in range(8) if r not in prefix and any(prefix | {r} <= s for s in completions)]
            best = max(extendable, key=lambda r: (objective(Y, [*prefix, r]), -r))
            assert order[t] == best, (k, t)
    capped = np.bincount(groups[order], minlength=3)
    assert (capped <= np.floor(c.group_share * len(order) + 1e-9)).all()


def random_pool(seed: int, n_samples: int = 300, n_labels: int = 30):
    rng = np.random.default_rng(seed)
    Y = sp.random_array((n_samples, n_labels), density=0.15, rng=rng, format="csr", data_sampler=lambda size: rng.uniform(0.5, 20, size))
    groups = rng.integers(5, size=n_samples)
    members = sp.csr_array((rng.random((n_samples, 6)) < 0.12).astype(np.int64))
    return sp.csr_array(Y, dtype=np.float32), groups, members


@pytest.mark.parametrize("frontier", ["default", "tiny"])
@pytest.mark.parametrize("params", [MigParams(), EXACT, MigParams(phi="exp", phi_alpha=0.05)], ids=["gradient", "exact", "exp"])
def test_lazy_equals_dense_and_constraints_hold_on_every_budget(params, frontier, monkeypatch):
    if frontier == "tiny":  # refills and discards on every few picks
        monkeypatch.setattr(mig, "_FRONTIER_SIZE", 8)
        monkeypatch.setattr(mig, "_FRONTIER_SAMPLE", 40)
    for seed in range(2):
        Y, groups, members = random_pool(seed)
        banned = np.random.default_rng(seed).random(300) < 0.1
        pinned = np.flatnonzero(~banned)[[3, 50, 120]]
        c = Constraints(
            300,
            pinned=pinned,
            banned=banned,
            group_ids=groups,
            group_share=np.array([0.3, 0.3, 0.3, 0.25, 0.3]),
            group_names=tuple("abcde"),
            label_members=members,
            label_min=np.array([4, 2, 0, 6, 0, 1]),
            label_max=np.array([300, 300, 5, 300, 3, 300]),
        )
        for k in (20, 60, 150, 190):
            lazy = select_constrained(Y, k, c, params)
            assert violations(c, lazy.order, k) == [], k
            assert set(pinned) == set(lazy.order[:3].tolist())
            np.testing.assert_array_equal(lazy.order, select_dense_constrained(Y, k, c, params))


def test_no_constraints_is_the_plain_greedy():
    Y, _, _ = random_pool(0)
    plain, constrained = select(Y, 120), select_constrained(Y, 120, Constraints(300))
    np.testing.assert_array_equal(plain.order, constrained.order)
    np.testing.assert_array_equal(plain.objective, constrained.objective)


def test_pinned_rows_enter_first_and_count_in_objective_and_budget():
    Y, _, _ = random_pool(1)
    free = select(Y, 10).order
    pinned = np.array([int(r) for r in range(300) if r not in set(free.tolist())][:3])
    result = select_constrained(Y, 10, Constraints(300, pinned=pinned), EXACT)
    assert len(result.order) == 10 and set(result.order[:3].tolist()) == set(pinned.tolist())
    assert result.objective[-1] == pytest.approx(objective(Y, result.order))
    assert result.objective[0] == pytest.approx(objective(Y, result.order[:1]))


def test_a_binding_cap_takes_the_best_feasible_candidate():
    # rows 0-2 (group 0) are the best; a cap of one third of 3 picks leaves one of them, then rows of group 1
    Y = sp.csr_array(np.array([[9.0, 0], [8, 0.1], [7, 0.2], [0, 3], [0, 2]], np.float32))
    c = Constraints(5, group_ids=np.array([0, 0, 0, 1, 1]), group_share=np.array([1 / 3, 1.0]))
    assert select_constrained(Y, 3, c, EXACT).order.tolist() == [0, 3, 4]
    assert select(Y, 3, EXACT).order.tolist()[:2] == [0, 1]  # unconstrained, group 0 again


@pytest.mark.parametrize(
    ("constraints", "k", "message"),
    [
        (Constraints(6, pinned=np.array([0, 1, 2])), 2, "must_include pins 3 samples but the budget is 2 picks"),
        (Constraints(6, pinned=np.array([1]), banned=np.array([0, 1, 0, 0, 0, 0], bool)), 3, "must_include and must_exclude share 1 sample"),
        (Constraints(6, banned=np.array([1, 1, 1, 1, 0, 0], bool)), 3, "must_exclude leaves 2 of 6 samples, fewer than the budget of 3"),
        (
            Constraints(
                6, group_ids=np.array([0, 0, 0, 0, 1, 1]), group_share=np.array([0.5, 0.5]), group_names=("a.jsonl", "b.jsonl"), group_by="source_file"
            ),
            6,
            "max_share by source_file: the caps admit at most 5 samples, fewer than the budget of 6 picks: 'a.jsonl' 3 (cap 3, 4 samples), 'b.jsonl' 2 (cap 3, 2 samples)",
        ),
        (
            Constraints(6, pinned=np.array([0, 1]), group_ids=np.zeros(6, int), group_share=np.array([0.3]), group_names=("x",), group_by="shard"),
            4,
            "max_share: shard 'x' has 2 must_include samples, above its cap of 1 (share 0.3 of 4 picks)",
        ),
        (
            Constraints(6, label_members=sp.csr_array(np.eye(6, 2, dtype=int)), label_min=np.array([2, 0]), label_names=("python", "sql")),
            3,
            "label_counts: 'python' needs at least 2 samples but only 1 not excluded carry it",
        ),
        (
            Constraints(
                6, label_members=sp.csr_array(np.ones((6, 2), int)), label_min=np.array([3, 1]), label_max=np.array([2, 6]), label_names=("python", "sql")
            ),
            3,
            "label_counts: 'python' has min 3 above max 2",
        ),
        (
            Constraints(
                6, label_members=sp.csr_array(np.eye(6, 3, dtype=int) + np.eye(6, 3, -3, dtype=int)), label_min=np.array([2, 2, 1]), label_names=("a", "b", "c")
            ),
            4,
            "label_counts: the minimums need 5 more picks ('a' 2, 'b' 2, 'c' 1) but only 4 of the 4 remain after 0 must_include samples",
        ),
    ],
)
def test_infeasible_specs_name_the_constraint_and_the_numbers(constraints, k, message):
    Y = sp.csr_array(np.ones((6, 2), np.float32))
    with pytest.raises(InfeasibleConstraints) as error:
        select_constrained(Y, k, constraints)
    assert message in str(error.value)


def test_stuck_greedy_names_the_pick_and_what_blocks_it():
    # the label minimum needs row 0 or 1, both in group 0, whose cap the pinned row 2 already fills
    Y = sp.csr_array(np.ones((4, 1), np.float32))
    c = Constraints(
        4,
        pinned=np.array([2]),
        group_ids=np.array([0, 0, 0, 1]),
        group_share=np.array([0.5, 0.5]),
        label_members=sp.csr_array(np.array([[1], [1], [0], [0]])),
        label_min=np.array([1]),
        label_names=("python",),
    )
    with pytest.raises(InfeasibleConstraints, match=r"at pick 2 of 2: label_counts still owe 'python' 1"):
        select_constrained(Y, 2, c)


# --- TAGS ------------------------------------------------------------------------------------------------------------


def tags_problem(seed: int, n_samples: int = 150, normalize: bool = True):
    from mig_assets.core.tags.problem import build_problem
    from tests.core.test_tags_select import random_pool

    A, q, parents, levels, target = random_pool(seed, n_samples=n_samples, normalize=normalize)
    return build_problem(A, q, parents, levels), target, A


def tags_constraints(n: int, leaves: sp.csr_array, seed: int) -> Constraints:
    rng = np.random.default_rng(seed)
    banned = rng.random(n) < 0.1
    return Constraints(
        n,
        pinned=np.flatnonzero(~banned)[[2, 40, 77]],
        banned=banned,
        group_ids=rng.integers(4, size=n),
        group_share=np.array([0.3, 0.4, 0.35, 0.4]),
        label_members=sp.csr_array(leaves[:, :4]),
        label_min=np.array([4, 0, 2, 0]),
        label_max=np.array([n, 8, n, 10]),
        label_names=("leaf 0", "leaf 1", "leaf 2", "leaf 3"),
    )


@pytest.mark.parametrize("frontier", ["default", "tiny"])
@pytest.mark.parametrize("align", ["none", "penalty"])
@pytest.mark.parametrize("seed", range(3))
def test_tags_lazy_equals_dense_and_constraints_hold_on_every_budget(align, seed, frontier, monkeypatch):
    from mig_assets.core.tags import lazy as tags_lazy
    from mig_assets.core.tags.constrained import select_constrained as tags_constrained
    from mig_assets.core.tags.constrained import select_dense_constrained as tags_dense
    from mig_assets.core.tags.params import TagsParams

    if frontier == "tiny":
        monkeypatch.setattr(tags_lazy, "_FRONTIER_SIZE", 8)
        monkeypatch.setattr(tags_lazy, "_FRONTIER_SAMPLE", 16)
    problem, target, A = tags_problem(seed, normalize=seed != 1)
    c = tags_constraints(problem.n_samples, A, seed)
    params = TagsParams(align=align, lam=2.0)
    for k in (12, 40, 75):
        lazy = tags_constrained(problem, k, c, params, target if align != "none" else None)
        assert violations(c, lazy.order, k) == [], (k, violations(c, lazy.order, k))
        assert set(c.pinned.tolist()) == set(lazy.order[:3].tolist())
        np.testing.assert_array_equal(lazy.order, tags_dense(problem, k, c, params, target if align != "none" else None))


def test_tags_without_constraints_is_the_plain_greedy_in_every_mode():
    # hard and quota were refused with constraints before they were built in (tests/core/test_constraints_aligned.py)
    from mig_assets.core.tags.constrained import select_constrained as tags_constrained
    from mig_assets.core.tags.modes import select as tags_select
    from mig_assets.core.tags.params import TagsParams

    problem, target, _ = tags_problem(0)
    for align in ("none", "penalty", "hard", "quota"):
        params = TagsParams(align=align)
        plain, constrained = tags_select(problem, 50, params, target), tags_constrained(problem, 50, Constraints(problem.n_samples), params, target)
        np.testing.assert_array_equal(plain.order, constrained.order)
        np.testing.assert_allclose(plain.objective, constrained.objective)
        if align != "none":
            np.testing.assert_allclose(plain.kl, constrained.kl)


def test_tags_brute_force_best_completable_candidate_under_caps():
    from mig_assets.core.tags.constrained import select_constrained as tags_constrained
    from mig_assets.core.tags.information import objective as tags_objective

    problem, _, _ = tags_problem(4, n_samples=9)
    groups = np.arange(9) % 3
    c = Constraints(9, pinned=np.array([4]), banned=np.eye(1, 9, 7, dtype=bool).ravel(), group_ids=groups, group_share=np.array([0.34, 0.5, 0.5]))
    for k in range(2, 7):
        try:
            order = tags_constrained(problem, k, c).order.tolist()
        except InfeasibleConstraints:
            assert not any(feasible(c, s, k) for s in itertools.combinations(range(9), k))
            continue
        completions = [set(s) for s in itertools.combinations(range(9), k) if feasible(c, s, k)]
        assert order[0] == 4 and feasible(c, order, k)
        for t in range(1, k):
            prefix = set(order[:t])
            extendable = [r for r in range(9) if r not in prefix and any(prefix | {r} <= s for s in completions)]
            best = max(extendable, key=lambda r: (tags_objective(problem, [*prefix, r]), -r))
            assert tags_objective(problem, [*prefix, order[t]]) == pytest.approx(tags_objective(problem, [*prefix, best]))


def test_constraint_reasons_name_the_binding_cap_pins_and_bans():
    from mig_assets.core.selection.constraint_spec import constraint_reasons

    Y = sp.csr_array(np.array([[9.0, 0], [8, 0.1], [7, 0.2], [0, 3], [0, 2], [1, 1]], np.float32))
    c = Constraints(
        6,
        pinned=np.array([4]),
        banned=np.eye(1, 6, 5, dtype=bool).ravel(),
        group_ids=np.array([0, 0, 0, 1, 1, 1]),
        group_share=np.array([1 / 3, 1.0]),
        group_names=("a.jsonl", "b.jsonl"),
        group_by="shard",
    )
    order = select_constrained(Y, 3, c, EXACT).order
    reasons = constraint_reasons(c, order)
    assert reasons[4] == "pinned by must_include" and reasons[5] == "excluded by must_exclude"
    assert sorted(order.tolist()) == [0, 3, 4]
    assert reasons[1] == reasons[2] == "max_share: its shard 'a.jsonl' is at its cap of 1 picks"
    assert 0 not in reasons and 3 not in reasons  # picked freely
