"""Token budgets under constraints and warm starts: the pins' tokens first, the longest fitting prefix,
the constraints and the churn cap held on the picks kept. Brute force and a dense reference on small pools."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import scipy.sparse as sp

from mig_assets.core.mig.algorithm import select
from mig_assets.core.mig.constrained import select_constrained, select_dense_constrained, warm_select
from mig_assets.core.mig.problem import MigParams
from mig_assets.core.selection.budget import fit_token_budget, pinned_token_prefix
from mig_assets.core.selection.constraints import Constraints, InfeasibleConstraints, violations
from mig_assets.core.selection.stability import StabilitySpec
from tests.core.test_constraints import EXACT, constraint_cases, feasible, small_pool
from tests.core.test_stability import grown_pool

NOTHING = np.empty(0, np.int64)


def fitted(Y, c: Constraints, tokens: np.ndarray, budget: int, params: MigParams = EXACT) -> np.ndarray:
    """The lazy constrained greedy fitted to a token budget (what run_selection does for MIG)."""
    return fit_token_budget(lambda k: select_constrained(Y, k, c, params), lambda run: run.order, tokens, budget, c).order


def reference(Y, c: Constraints, tokens: np.ndarray, budget: int) -> np.ndarray:
    """The documented rule written out over the dense greedy: from the starting count down, pins'
    tokens first, then the longest fitting prefix of the other picks; re-run at the kept count until
    everything fits; a run stuck after p picks is re-run at p."""
    k = c.token_picks(tokens, budget)
    while True:
        try:
            order = select_dense_constrained(Y, k, c, EXACT)
        except InfeasibleConstraints:
            raise
        except ValueError as error:  # the dense greedy: "no admissible row at pick p + 1 of k"
            k = c.fillable(int(re.search(r"at pick (\d+) of", str(error)).group(1)) - 1)
            continue
        room = budget - tokens[c.pinned].sum()
        kept, spent = list(c.pinned), 0
        for row in order[len(c.pinned) :]:
            if spent + tokens[row] > room:
                break
            kept.append(row)
            spent += tokens[row]
        if len(kept) == k:
            return order
        k = c.fillable(len(kept))


@pytest.mark.parametrize("seed", range(4))
def test_token_budgets_under_every_constraint_match_brute_force(seed):
    Y, groups, members = small_pool(seed)
    n = Y.shape[0]
    tokens = np.random.default_rng(seed).integers(10, 80, n)
    for name, c in constraint_cases(groups, members, n):
        returned = 0
        for budget in range(0, int(tokens.sum()) + 1, 25):
            # every set of rows that satisfies the constraints at its own size and fits the budget
            fits = [s for m in range(n + 1) for s in itertools.combinations(range(n), m) if feasible(c, s, m) and tokens[list(s)].sum() <= budget]
            if tokens[c.pinned].sum() <= budget:  # the count the fit starts from is no smaller than any such set
                assert c.token_picks(tokens, budget) >= max((len(s) for s in fits), default=0), (name, budget)
            try:
                order = fitted(Y, c, tokens, budget)
            except InfeasibleConstraints as error:
                # exact for pins (only when they alone exceed the budget), bans and caps; label bounds as for count budgets
                assert name in ("label_min", "label_max", "all") or (name == "pinned" and tokens[c.pinned].sum() > budget), (name, budget, error)
                assert "token" in str(error), (name, budget, error)
                with pytest.raises(InfeasibleConstraints):
                    reference(Y, c, tokens, budget)
                continue
            m = len(order)
            assert tokens[order].sum() <= budget, (name, budget)
            assert feasible(c, order, m) and violations(c, order, m) == [], (name, budget, order)
            assert set(order[: len(c.pinned)].tolist()) == set(c.pinned.tolist())  # the pins come first
            assert tuple(sorted(order.tolist())) in {tuple(sorted(s)) for s in fits}
            np.testing.assert_array_equal(order, reference(Y, c, tokens, budget))  # lazy = dense under the rule
            np.testing.assert_array_equal(order, select_constrained(Y, m, c, EXACT).order)  # the greedy at the kept count
            returned += 1
        assert returned >= 3, f"{name}: too few budgets selected to test anything"


def test_unconstrained_fit_is_the_plain_prefix():
    Y, _, _ = small_pool(1, n_samples=40, n_labels=12)
    tokens = np.random.default_rng(1).integers(5, 90, 40)
    plain = select(Y, 40, EXACT).order
    for budget in (0, 50, 300, 900, int(tokens.sum())):
        order = fitted(Y, Constraints(40), tokens, budget)
        np.testing.assert_array_equal(order, plain[: len(pinned_token_prefix(plain, tokens, budget, NOTHING))])


def test_pins_over_the_token_budget_and_unmeetable_minimums_are_errors_naming_them():
    Y, groups, members = small_pool(0, n_samples=30, n_labels=8)
    tokens = np.full(30, 10)
    tokens[[3, 4]] = 400
    pins = Constraints(30, pinned=np.array([3, 4]))
    with pytest.raises(InfeasibleConstraints, match="must_include pins 2 samples of 800 tokens, above the token budget of 700"):
        fitted(Y, pins, tokens, 700)
    assert set(fitted(Y, pins, tokens, 800).tolist()) == {3, 4}  # the pins alone, nothing else fits
    carriers = np.zeros((30, 1), np.int64)
    carriers[[5, 6, 7], 0] = 1
    tokens[[5, 6, 7]] = 300
    python = Constraints(30, label_members=sp.csr_array(carriers), label_min=np.array([3]), label_names=("python",))
    with pytest.raises(InfeasibleConstraints, match=r"token budget of 800 tokens, at \d+ picks: label_counts: .*'python'"):
        fitted(Y, python, tokens, 800)  # three carriers need 900 tokens
    order = fitted(Y, python, tokens, 1100)  # three carriers (900 tokens) and what fits beside them
    assert {5, 6, 7} <= set(order.tolist()) and tokens[order].sum() <= 1100


def test_group_caps_hold_on_the_kept_prefix_not_on_the_starting_count():
    """A plain cut of the run at the starting count would keep the cheap group above its share of the kept picks."""
    Y, _, _ = small_pool(3, n_samples=60, n_labels=10)
    groups = (np.arange(60) >= 20).astype(np.int64)  # group 0: rows 0-19
    tokens = np.where(groups == 0, 5, 100)
    c = Constraints(60, group_ids=groups, group_share=np.array([0.3, 1.0]), group_names=("cheap", "long"))
    budget = 1000
    start = c.token_picks(tokens, budget)
    cut = pinned_token_prefix(select_constrained(Y, start, c, EXACT).order, tokens, budget, NOTHING)
    assert violations(c, cut, len(cut)) == [f"'cheap' has 8 picks, above its cap {int(0.3 * len(cut))}"]  # cut once: the cap broken
    order = fitted(Y, c, tokens, budget)
    assert violations(c, order, len(order)) == [] and tokens[order].sum() <= budget and len(order) < len(cut) < start


@pytest.mark.parametrize("seed", range(3))
def test_warm_reselection_under_a_token_budget_caps_churn_on_the_kept_picks(seed):
    from mig_assets.core.selection.run import steered_run
    from mig_assets.core.selection.stability import WarmStart, previous_first

    Y, n_old = grown_pool(seed, n_old=600, n_new=60, n_labels=80)
    n = Y.shape[0]
    tokens = np.random.default_rng(seed).integers(20, 200, n)
    previous = select(Y[:n_old], 60).order
    new_rows = np.arange(n_old, n)
    spec = StabilitySpec("warm", max_churn=0.1, margin=0.05)
    warm_start = WarmStart(previous, new_rows, spec)
    for c in (Constraints(n), Constraints(n, pinned=new_rows[:2])):
        for budget in (int(tokens[previous].sum() * 0.7), int(tokens[previous].sum()) + 300):  # the budget shrank; it holds the previous picks
            run_at = lambda k: warm_select(Y, k, previous, new_rows, spec, c, MigParams())  # noqa: E731
            selection, warm, report = steered_run(run_at, 0, tokens, budget, c, warm_start)  # what run_selection runs
            m = len(selection.order)
            assert tokens[selection.order].sum() <= budget and "fallback" not in report
            assert set(c.pinned.tolist()) <= set(selection.order.tolist()) and violations(c, selection.order, m) == []
            outside = set(selection.order.tolist()) - set(previous.tolist())
            assert len(outside - set(c.pinned.tolist())) <= int(np.floor(0.1 * m + 1e-9))  # the churn cap, measured on the kept picks
            assert outside <= set(new_rows.tolist())  # no old sample displaced an old one
            again = warm_select(Y, m, previous, new_rows, spec, c, MigParams())[0].order
            np.testing.assert_array_equal(selection.order, again)  # the warm start at the kept count
            kept_first = previous_first(selection.order, previous)
            assert set(kept_first[: report["selection"]["kept"]].tolist()) <= set(previous.tolist())
            if budget > tokens[previous].sum():  # room for the previous picks: only swaps and room for the pins remove one
                assert len(warm.dropped) == max(0, 60 + len(c.pinned) - m) and report["selection"]["added_old_samples"] == 0
                assert report["selection"]["removed"] == len(warm.swaps) + len(warm.dropped)


def test_run_selection_takes_token_budgets_with_constraints_and_warm_starts():
    from mig_assets.core.selection.inputs import LabelGraph, PoolArrays, SelectionInputs
    from mig_assets.core.selection.request import build_request
    from mig_assets.core.selection.run import mig_matrix, run_selection
    from mig_assets.core.selection.stability import WarmStart

    rng = np.random.default_rng(4)
    labels = [f"l{i}" for i in range(25)]
    n = 200
    pool = PoolArrays(
        [f"s{i}" for i in range(n)], [list(rng.choice(labels, 3, replace=False)) for _ in range(n)], rng.uniform(1, 5, n), rng.integers(10, 300, n)
    )
    graph = LabelGraph(labels, sp.csr_array(sp.identity(25, dtype=np.float32, format="csr")))
    inputs = SelectionInputs(pool, "test", 1.0, 0, graph=graph)
    groups = np.arange(n) % 3
    c = Constraints(n, pinned=np.array([7, 150]), group_ids=groups, group_share=np.array([0.4, 0.4, 0.4]))
    request = build_request("mig", {"budget_tokens": 3000})
    outcome = run_selection(request, inputs, constraints=c)
    assert pool.tokens[outcome.order].sum() <= 3000 and violations(c, outcome.order, len(outcome.order)) == []
    Y = mig_matrix(pool, graph)
    expected = fit_token_budget(lambda k: select_constrained(Y, k, c), lambda r: r.order, pool.tokens, 3000, c)
    np.testing.assert_array_equal(outcome.order, expected.order)
    assert outcome.reasons[7] == outcome.reasons[150] and "must_include" in outcome.reasons[7]
    previous = select(Y[:150], 20).order
    warm = WarmStart(previous, np.arange(150, n), StabilitySpec("warm", max_churn=0.1))
    grown = run_selection(request, inputs, constraints=c, warm=warm)
    assert pool.tokens[grown.order].sum() <= 3000 and {7, 150} <= set(grown.order.tolist())
    outside = set(grown.order.tolist()) - set(previous.tolist()) - {7, 150}
    assert grown.stability is not None and len(outside) <= int(np.floor(0.1 * len(grown.order) + 1e-9))


def test_tags_token_budget_under_constraints_holds_them_on_the_kept_picks():
    from mig_assets.core.tags.constrained import select_constrained as tags_constrained
    from mig_assets.core.tags.constrained import select_dense_constrained as tags_dense
    from mig_assets.core.tags.params import TagsParams
    from tests.core.test_constraints import tags_constraints, tags_problem

    problem, _, A = tags_problem(1)
    c = tags_constraints(problem.n_samples, A, 1)
    tokens = np.random.default_rng(1).integers(10, 400, problem.n_samples)
    for budget in (3000, 6000, 12000):
        lazy = fit_token_budget(lambda k: tags_constrained(problem, k, c, TagsParams()), lambda r: r.order, tokens, budget, c).order
        dense = fit_token_budget(lambda k: tags_dense(problem, k, c, TagsParams()), lambda order: order, tokens, budget, c)
        assert tokens[lazy].sum() <= budget and violations(c, lazy, len(lazy)) == [] and set(c.pinned.tolist()) == set(lazy[:3].tolist())
        np.testing.assert_array_equal(lazy, dense)


def test_a_warm_fit_starts_from_the_previous_picks_that_fit_and_keeps_them_first():
    from mig_assets.core.selection.stability import previous_first, warm_token_picks

    tokens = np.array([50, 40, 30, 20, 10, 5, 5, 100])
    banned = np.zeros(8, bool)
    banned[6] = True
    c = Constraints(8, pinned=np.array([7]), banned=banned)
    # pin 7 (100) first, then previous 0 (50), 1 (40): 190; 2 (30) would pass 200; then the cheapest left that fit 10: row 5
    assert warm_token_picks(c, np.array([0, 1, 2, 6]), tokens, 200) == 4
    with pytest.raises(InfeasibleConstraints, match="above the token budget of 99"):
        warm_token_picks(c, np.array([0, 1]), tokens, 99)
    np.testing.assert_array_equal(previous_first(np.array([4, 1, 7, 0]), np.array([0, 1, 2])), [0, 1, 4, 7])


def test_fillable_is_the_largest_count_the_caps_can_fill_by_brute_force():
    rng = np.random.default_rng(7)
    for _ in range(30):
        n, groups = 40, int(rng.integers(1, 5))
        banned = rng.random(n) < 0.2
        c = Constraints(n, banned=banned, group_ids=rng.integers(groups, size=n), group_share=rng.uniform(0.05, 0.9, groups))
        available = np.bincount(c.group_ids[~banned], minlength=groups)
        for k in range(n + 1):
            assert c.fillable(k) == max(m for m in range(k + 1) if np.minimum(c.group_caps(m), available).sum() >= m)
