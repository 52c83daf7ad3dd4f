"""TAGS ``hard`` and ``quota`` under constraints: both the mode's per-pick rule and the constraints apply.

Brute force on small pools (each pick checked against both rules recomputed from their definitions),
pins that break the mode's rule refused with the numbers, lazy = dense on larger pools."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import scipy.sparse as sp

from mig_assets.core.selection.constraints import Constraints, InfeasibleConstraints, violations
from mig_assets.core.tags.constrained import select_constrained, select_dense_constrained
from mig_assets.core.tags.information import kl_divergence, leaf_quotas, primary_leaves
from mig_assets.core.tags.information import objective as information
from mig_assets.core.tags.params import TagsParams
from mig_assets.core.tags.problem import build_problem, target_distribution
from tests.core.test_constraints import constraint_cases, feasible, small_pool, tags_constraints, tags_problem
from tests.core.test_tags_select import single_tag_pool

MODES = {
    "hard": TagsParams(align="hard", kl_cap=1.2, kl_cap_start=2.5, kl_cap_decay=0.6),  # feasible part of the way
    "quota": TagsParams(align="quota"),
}


def leaf_mass(problem, rows) -> np.ndarray:
    return np.asarray(problem.leaves[np.asarray(rows, np.int64)].sum(axis=0)).ravel() if len(rows) else np.zeros(problem.leaves.shape[1])


def admissible_by_definition(c: Constraints, prefix: list[int], k: int) -> list[int]:
    """Rows the constraints admit after ``prefix`` (pins already in), straight from their definitions."""
    rows = [r for r in range(c.n_samples) if r not in prefix and not c.banned[r]]
    if c.group_ids is not None:
        caps = np.floor(c.group_share * k + 1e-9)
        counts = np.bincount(c.group_ids[prefix], minlength=len(caps)) if prefix else np.zeros(len(caps))
        rows = [r for r in rows if counts[c.group_ids[r]] < caps[c.group_ids[r]]]
    if c.label_members is not None:
        members = c.label_members.toarray()
        counts = members[prefix].sum(axis=0) if prefix else np.zeros(members.shape[1])
        rows = [r for r in rows if not (members[r] & (counts >= c.label_max)).any()]
        owed = np.maximum(c.label_min - counts, 0)
        if owed.sum() > 0 and k - len(prefix) <= owed.sum():  # no slack left: a row must carry an owed label
            rows = [r for r in rows if (members[r] & (owed > 0)).any()]
    return rows


def rule_choices(mode: str, problem, target, params: TagsParams, prefix: list[int], rows: list[int], k: int, quotas, primary) -> set[int]:
    """The rows the mode's rule may take among ``rows`` (ties within 1e-9), from scratch: hard by
    KL(t ‖ p_{S+i}) against the cap, quota by the primary leaves' counts against the quotas."""
    mass = np.diff(problem.leaves.indptr)
    grounded = [r for r in rows if mass[r] > 0]
    if not grounded:
        return {min(rows)}
    gain = {r: information(problem, [*prefix, r]) for r in grounded}
    if mode == "hard":
        kl = {r: kl_divergence(target, leaf_mass(problem, [*prefix, r]), params.eps) for r in grounded}
        within = [r for r in grounded if kl[r] <= params.kl_cap_at(len(prefix), k)]
        if not within:
            least = min(kl.values())
            return {r for r in grounded if kl[r] <= least + 1e-9}
        grounded = within
    else:
        used = np.bincount(primary[prefix][primary[prefix] >= 0], minlength=len(quotas)) if prefix else np.zeros(len(quotas))
        open_ = [r for r in grounded if used[primary[r]] < quotas[primary[r]]]
        grounded = open_ or grounded
    best = max(gain[r] for r in grounded)
    return {r for r in grounded if gain[r] >= best - 1e-9}


def check_refusal(mode: str, error: InfeasibleConstraints, problem, target, params, c: Constraints, k: int, quotas, primary) -> None:
    """A refusal is a constraint the spec cannot meet, or pins that break the mode's rule, with its numbers."""
    message = str(error)
    if message.startswith("align quota:"):
        pinned = primary[c.pinned][primary[c.pinned] >= 0]
        over = np.flatnonzero(np.bincount(pinned, minlength=len(quotas)) > quotas)
        assert len(over) and f"have leaf {over[0]} as their primary leaf, above its quota of {quotas[over[0]]}" in message
    elif message.startswith("align hard:"):
        assert "must_include sample" in message and "above the cap" in message
    else:
        assert not any(feasible(c, s, k) for s in itertools.combinations(range(c.n_samples), k)) or c.label_members is not None, message


@pytest.mark.parametrize("mode", ["hard", "quota"])
@pytest.mark.parametrize("seed", range(4))
def test_brute_force_both_rules_every_constraint_every_budget(mode, seed):
    problem, target, A = tags_problem(seed, n_samples=9)
    _, groups, members = small_pool(seed)
    params, n = MODES[mode], problem.n_samples
    primary = primary_leaves(A)
    returned = refused = 0
    for name, c in constraint_cases(groups, members, n):
        allowed = np.flatnonzero((np.diff(A.indptr) > 0) & ~c.banned)
        for k in range(1, n + 1):
            quotas = leaf_quotas(min(k, len(allowed)), target, np.bincount(primary[allowed], minlength=A.shape[1]))
            try:
                order = select_constrained(problem, k, c, params, target).order.tolist()
            except InfeasibleConstraints as error:
                with pytest.raises(InfeasibleConstraints):
                    select_dense_constrained(problem, k, c, params, target)
                check_refusal(mode, error, problem, target, params, c, k, quotas, primary)
                refused += 1
                continue
            assert feasible(c, order, k) and violations(c, order, k) == [], (name, k, order)
            assert set(order[: len(c.pinned)]) == set(c.pinned.tolist())
            for t in range(len(c.pinned), k):
                rows = admissible_by_definition(c, order[:t], k)
                assert order[t] in rows, (name, k, t)
                assert order[t] in rule_choices(mode, problem, target, params, order[:t], rows, k, quotas, primary), (name, k, t, order)
            np.testing.assert_array_equal(order, select_dense_constrained(problem, k, c, params, target))
            returned += 1
    assert returned >= 20 and (mode == "hard" or refused >= 1), (returned, refused)


def test_quota_pins_count_against_the_quotas_and_too_many_are_refused():
    A, q, parents, levels, leaves = single_tag_pool(per_leaf=6)  # 12 leaves, one tag per sample, leaf of row r: r % 12
    problem = build_problem(A, q, parents, levels)
    target = target_distribution(np.where(np.arange(12) < 3, 1.0, 0.0), alpha=0.0)  # leaves 0-2 only, a third each
    pinned = np.flatnonzero(leaves == 1)[:2]
    selection = select_constrained(problem, 9, Constraints(problem.n_samples, pinned=pinned), TagsParams(align="quota"), target)
    assert set(selection.order[:2].tolist()) == set(pinned.tolist())
    np.testing.assert_array_equal(np.bincount(leaves[selection.order], minlength=12)[:3], [3, 3, 3])  # the pins used two of leaf 1's three
    too_many = np.flatnonzero(leaves == 1)[:4]
    with pytest.raises(
        InfeasibleConstraints,
        match=r"align quota: 4 must_include samples have leaf 1 as their primary leaf, above its quota of 3 \(9 picks x target share 0.3333",
    ):
        select_constrained(problem, 9, Constraints(problem.n_samples, pinned=too_many), TagsParams(align="quota"), target)
    off_target = np.flatnonzero(leaves == 7)[:1]
    with pytest.raises(InfeasibleConstraints, match="leaf 7 as their primary leaf, above its quota of 0"):
        select_dense_constrained(problem, 9, Constraints(problem.n_samples, pinned=off_target), TagsParams(align="quota"), target)


def test_a_pin_that_takes_kl_above_the_cap_is_refused_only_when_another_sample_would_not():
    A, q, parents, levels, leaves = single_tag_pool(per_leaf=4)
    problem = build_problem(A, q, parents, levels)
    target = target_distribution(np.where(np.arange(12) == 0, 1.0, 0.0), alpha=0.0)  # all on leaf 0
    params = TagsParams(align="hard", kl_cap=0.5, kl_cap_start=0.5)
    on, off = np.flatnonzero(leaves == 0)[0], np.flatnonzero(leaves == 5)[0]
    # the off-target pin enters second (the on-target one is within the cap): KL ln 2 > 0.5, while a leaf-0 sample keeps it at 0
    message = rf"align hard: must_include sample \(row {off}\) enters at pick 2 of 4 with KL\(t \|\| p_S\) = 0.69\d+, above the cap 0.5 at that pick, where a sample not pinned would keep it at 0.00\d+"
    for selector in (select_constrained, select_dense_constrained):
        with pytest.raises(InfeasibleConstraints, match=message):
            selector(problem, 4, Constraints(problem.n_samples, pinned=np.array([on, off])), params, target)
    # with every leaf-0 sample excluded no sample could do better: the pin enters as the least-KL row would
    banned = (leaves == 0) & (np.arange(len(leaves)) != on)
    c = Constraints(problem.n_samples, pinned=np.array([on, off]), banned=banned)
    selection = select_constrained(problem, 4, c, params, target)
    assert selection.order[:2].tolist() == [on, off] and selection.kl[1] > 0.5
    np.testing.assert_array_equal(selection.order, select_dense_constrained(problem, 4, c, params, target))


def quota_safe_constraints(n: int, A: sp.csr_array, target, seed: int) -> Constraints:
    """``tags_constraints`` with pins on distinct leaves of the largest target shares (within every budget's quota)."""
    c = tags_constraints(n, A, seed)
    primary = primary_leaves(A)
    pins = [int(np.flatnonzero((primary == leaf) & ~c.banned)[0]) for leaf in np.argsort(-target)[:3] if ((primary == leaf) & ~c.banned).any()]
    return Constraints(
        n,
        pinned=np.array(pins),
        banned=c.banned,
        group_ids=c.group_ids,
        group_share=c.group_share,
        label_members=c.label_members,
        label_min=c.label_min,
        label_max=c.label_max,
    )


@pytest.mark.parametrize("frontier", ["default", "tiny"])
@pytest.mark.parametrize("mode", ["hard", "hard_tight", "quota"])
@pytest.mark.parametrize("seed", range(3))
def test_lazy_equals_dense_and_constraints_hold_on_every_budget(mode, seed, frontier, monkeypatch):
    from mig_assets.core.tags import hard_search, pull_order
    from mig_assets.core.tags import lazy as tags_lazy

    if frontier == "tiny":  # refills, parked rows, merges and early least-ΔKL searches on every few picks
        monkeypatch.setattr(tags_lazy, "_FRONTIER_SIZE", 8)
        monkeypatch.setattr(tags_lazy, "_FRONTIER_SAMPLE", 16)
        monkeypatch.setattr(pull_order, "_PULL_BLOCK", 4)
        monkeypatch.setattr(pull_order, "_OVERFLOW_MIN", 2)
        monkeypatch.setattr(pull_order, "_RECENT_MAX", 2)
        monkeypatch.setattr(hard_search, "GIVE_UP", 3)
    params = {
        "hard": TagsParams(align="hard", kl_cap=0.3, kl_cap_start=2.5),
        "hard_tight": TagsParams(align="hard", kl_cap=0.05, kl_cap_start=0.05),
        "quota": TagsParams(align="quota"),
    }[mode]
    problem, target, A = tags_problem(seed, normalize=seed != 1)
    c = quota_safe_constraints(problem.n_samples, A, target, seed)
    primary = primary_leaves(A)
    returned = 0
    for k in (12, 40, 75, 100):
        try:
            lazy = select_constrained(problem, k, c, params, target)
        except InfeasibleConstraints as error:  # a pin above the cap, or the label maxima exhausted late: both refuse alike
            stuck = re.search(r"at pick \d+ of \d+", str(error))  # the dense reference names only the pick
            with pytest.raises(InfeasibleConstraints, match=re.escape(str(error) if str(error).startswith("align") or not stuck else stuck.group())):
                select_dense_constrained(problem, k, c, params, target)
            continue
        returned += 1
        assert violations(c, lazy.order, k) == [], (k, violations(c, lazy.order, k))
        assert set(c.pinned.tolist()) == set(lazy.order[: len(c.pinned)].tolist())
        np.testing.assert_array_equal(lazy.order, select_dense_constrained(problem, k, c, params, target))
        if mode == "quota" and "global_fill_from" not in lazy.info:  # the quota rule held on every free pick
            counts = np.bincount(primary[lazy.order][primary[lazy.order] >= 0], minlength=A.shape[1])
            assert (counts <= lazy.info["quotas"]).all() or c.label_min.any()
    assert returned >= 3
