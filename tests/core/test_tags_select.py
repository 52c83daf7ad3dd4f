"""Tests of TAGS selection: the metric, lazy vs dense vs brute-force greedy, KL alignment modes, edge cases."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import scipy.sparse as sp

from mig_assets.core.mig.problem import MigParams, phi, phi_prime
from mig_assets.core.tags import hard_search, modes, pull_order
from mig_assets.core.tags import lazy as lazy_greedy
from mig_assets.core.tags.dense import select_dense
from mig_assets.core.tags.information import (
    coverage_by_level,
    delta_kl,
    kl_divergence,
    leaf_entropy,
    leaf_quotas,
    objective,
    primary_leaves,
)
from mig_assets.core.tags.modes import select
from mig_assets.core.tags.params import TagsParams
from mig_assets.core.tags.problem import (
    ancestor_weights,
    build_problem,
    leaf_weights,
    level_weights,
    rank_normalize,
    target_distribution,
)

PHI = MigParams(phi_a=1e-6, phi_b=0.8)


def balanced_tree(per_level: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """parents, levels of a levelled tree with per_level[j] nodes on level j+1 (leaves first), then a root;
    node i of a level hangs below node i·n_above // n_here of the level above."""
    sizes = [*per_level, 1]
    offsets = np.cumsum([0, *sizes])
    parents, levels = [], []
    for depth, n_here in enumerate(sizes):
        levels += [depth + 1] * n_here
        if depth + 1 < len(sizes):
            n_above = sizes[depth + 1]
            parents += [int(offsets[depth + 1] + i * n_above // n_here) for i in range(n_here)]
        else:
            parents.append(-1)
    return np.array(parents), np.array(levels)


def random_pool(seed: int, n_samples: int = 120, per_level=(24, 8, 3), max_tags: int = 5, duplicates: bool = True, normalize: bool = True):
    """Random tagged pool: Zipf-ish leaves, unassigned tags, samples without tags, exact duplicates, q = 0 rows."""
    rng = np.random.default_rng(seed)
    parents, levels = balanced_tree(list(per_level))
    n_leaves = per_level[0]
    popularity = 1.0 / np.arange(1, n_leaves + 1) ** 0.8
    popularity /= popularity.sum()
    tag_lists = []
    for _ in range(n_samples):
        leaves = rng.choice(n_leaves, size=rng.integers(0, max_tags + 1), p=popularity).tolist()
        tag_lists.append([leaf if rng.random() > 0.1 else -1 for leaf in leaves])
    quality = rng.uniform(0.05, 1.0, size=n_samples)
    quality[rng.random(n_samples) < 0.05] = 0.0
    if duplicates:
        for copy, original in rng.integers(n_samples, size=(n_samples // 6, 2)).tolist():
            tag_lists[copy], quality[copy] = list(tag_lists[original]), quality[original]
    indptr = np.concatenate([[0], np.cumsum([len(t) for t in tag_lists])])
    ids = np.array([leaf for tags in tag_lists for leaf in tags], dtype=np.int64)
    A = leaf_weights(indptr, ids, n_leaves, normalize=normalize)
    target = target_distribution(rng.integers(0, 20, size=n_leaves) * (rng.random(n_leaves) < 0.7), alpha=0.5)
    return A, quality, parents, levels, target


def single_tag_pool(per_leaf: int, per_level=(12, 4, 2), quality=None):
    """Every sample has exactly one tag; per_leaf samples per leaf, listed leaf by leaf round robin."""
    parents, levels = balanced_tree(list(per_level))
    n_leaves = per_level[0]
    leaves = np.tile(np.arange(n_leaves), per_leaf)
    A = leaf_weights(np.arange(len(leaves) + 1), leaves, n_leaves)
    q = np.ones(len(leaves)) if quality is None else quality
    return A, q, parents, levels, leaves


def objective_of(problem, rows) -> float:
    return objective(problem, list(rows))


# --------------------------------------------------------------------------------------------------------------------
# metric


def test_phi_prime_matches_finite_differences():
    x = np.array([1e-4, 1e-2, 0.3, 1.0, 7.5, 120.0])
    h = 1e-6 * np.maximum(x, 1e-3)
    finite = (phi(x + h, PHI) - phi(x - h, PHI)) / (2 * h)
    np.testing.assert_allclose(phi_prime(x, PHI), finite, rtol=1e-6)


def test_path_vectors_follow_the_tree_with_decay_and_quality():
    parents, levels = balanced_tree([4, 2])  # leaves 0-3, level 2: 4, 5; root 6
    A = leaf_weights(np.array([0, 2, 3, 3]), np.array([0, 3, 1]), 4)  # sample 0: leaves 0, 3; 1: leaf 1; 2: none
    problem = build_problem(A, [2.0, 1.0, 5.0], parents, levels, gamma=0.5)
    U = problem.paths.toarray()
    np.testing.assert_allclose(U[0], [1.0, 0, 0, 1.0, 0.5, 0.5, 0])  # q·a = 2·½ per leaf, γ = ½ one level up
    np.testing.assert_allclose(U[1], [0, 1.0, 0, 0, 0.5, 0, 0])
    assert not U[2].any()
    with_root = build_problem(A, [2.0, 1.0, 5.0], parents, levels, gamma=0.5, include_root=True).paths.toarray()
    np.testing.assert_allclose(with_root[:, 6], [0.5, 0.25, 0])
    omega = ancestor_weights(parents, levels, 4, gamma=0.25).toarray()
    np.testing.assert_allclose(omega[2], [0, 0, 1, 0, 0, 0.25, 0])


def test_leaf_weights_normalised_counted_or_diluted():
    indptr, ids = np.array([0, 3, 5, 6]), np.array([1, 1, -1, 0, 2, -1])
    np.testing.assert_allclose(leaf_weights(indptr, ids, 3).toarray(), [[0, 1, 0], [0.5, 0, 0.5], [0, 0, 0]])
    np.testing.assert_allclose(leaf_weights(indptr, ids, 3, normalize=False).toarray(), [[0, 2, 0], [1, 0, 1], [0, 0, 0]])
    np.testing.assert_allclose(leaf_weights(indptr, ids, 3, count_unassigned=True).toarray(), [[0, 2 / 3, 0], [0.5, 0, 0.5], [0, 0, 0]])
    with pytest.raises(ValueError, match="leaf ids"):
        leaf_weights(indptr, np.array([1, 1, -1, 0, 3, -1]), 3)


def test_level_weights():
    levels = np.array([1, 1, 1, 1, 2, 2, 3])
    np.testing.assert_allclose(level_weights(levels, "equal"), [0.25] * 4 + [0.5] * 2 + [1])
    np.testing.assert_allclose(level_weights(levels, {1: 2.0, 3: 1.0}), [2] * 4 + [0, 0, 1])
    np.testing.assert_allclose(level_weights(levels, np.array([0, 1, 3, 0])), [1] * 4 + [3, 3, 0])


@pytest.mark.parametrize("seed", [0, 1])
def test_objective_is_monotone_and_submodular(seed):
    A, q, parents, levels, _ = random_pool(seed, n_samples=14, per_level=(6, 3), max_tags=3, duplicates=False)
    problem = build_problem(A, q, parents, levels, beta="equal")
    rng = np.random.default_rng(seed)
    n = problem.n_samples
    value = {}

    def E(rows: frozenset) -> float:
        if rows not in value:
            value[rows] = objective_of(problem, sorted(rows))
        return value[rows]

    for _ in range(300):
        big = frozenset(np.flatnonzero(rng.random(n) < 0.5).tolist())
        small = frozenset(r for r in big if rng.random() < 0.5)
        outside = [i for i in range(n) if i not in big]
        if not outside:
            continue
        i = int(rng.choice(outside))
        assert E(big | {i}) >= E(big) - 1e-12  # monotone
        assert E(small | {i}) - E(small) >= E(big | {i}) - E(big) - 1e-12  # diminishing returns


def test_gains_objective_and_kl_traces_match_recomputation():
    A, q, parents, levels, target = random_pool(3)
    problem = build_problem(A, q, parents, levels)
    selection = select(problem, 40, TagsParams(align="penalty", lam=0.5), target)
    E = [objective_of(problem, selection.order[: j + 1]) for j in range(40)]
    np.testing.assert_allclose(selection.objective, E, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(selection.gains, np.diff(E, prepend=0.0), rtol=1e-7, atol=1e-10)
    kl = [kl_divergence(target, np.asarray(A[selection.order[: j + 1]].sum(axis=0)).ravel()) for j in range(40)]
    np.testing.assert_allclose(selection.kl, kl, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(selection.leaf_mass, np.asarray(A[selection.order].sum(axis=0)).ravel())
    np.testing.assert_allclose(selection.coverage, np.asarray(problem.paths[selection.order].sum(axis=0)).ravel())


def test_top_nodes_are_the_largest_contributions():
    A, q, parents, levels, _ = random_pool(4)
    problem = build_problem(A, q, parents, levels)
    selection = select(problem, 30, n_top_nodes=3)
    U = problem.paths.toarray()
    x = np.zeros(problem.n_nodes)
    for pick, row in enumerate(selection.order):
        contribution = phi(x + U[row], PHI) - phi(x, PHI)
        nonzero = np.flatnonzero(U[row])
        expected = nonzero[np.lexsort((nonzero, -contribution[nonzero]))][:3].tolist()
        assert selection.top_nodes[pick, : len(expected)].tolist() == expected
        assert (selection.top_nodes[pick, len(expected) :] == -1).all()
        x += U[row]


# --------------------------------------------------------------------------------------------------------------------
# greedy: lazy vs dense vs brute force


CONFIGS = [
    dict(params=TagsParams(align="none")),
    dict(params=TagsParams(align="none"), gamma=1.0, beta="equal"),
    dict(params=TagsParams(align="none"), normalize=False, include_root=True),
    dict(params=TagsParams(align="penalty", lam=1.0)),
    dict(params=TagsParams(align="penalty", lam=3.0), normalize=False),  # several mass groups
    dict(params=TagsParams(align="penalty", lam=0.3), beta="equal", gamma=0.8),
    dict(params=TagsParams(align="hard", kl_cap=0.3, kl_cap_start=1.5)),
    dict(params=TagsParams(align="hard", kl_cap=0.05, kl_cap_start=0.2), normalize=False),
    dict(params=TagsParams(align="quota")),
    dict(params=TagsParams(align="quota"), normalize=False),
]


@pytest.mark.parametrize("config", range(len(CONFIGS)))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lazy_greedy_equals_dense_greedy(config, seed):
    config = dict(CONFIGS[config])
    params = config.pop("params")
    normalize = config.pop("normalize", True)
    A, q, parents, levels, target = random_pool(seed, normalize=normalize)
    problem = build_problem(A, q, parents, levels, **config)
    for k in (0, 1, 37, problem.n_samples + 5):
        lazy = select(problem, k, params, target if params.align != "none" else None)
        dense = select_dense(problem, k, params, target if params.align != "none" else None)
        np.testing.assert_array_equal(lazy.order, dense)
        assert len(lazy.order) == min(k, problem.n_samples)
        assert len(set(lazy.order.tolist())) == len(lazy.order)


@pytest.mark.parametrize("config", range(len(CONFIGS)))
def test_lazy_equals_dense_with_a_tiny_frontier(config, monkeypatch):
    """A frontier of 8 rows (sampled limits, refills, rows outside it) and hard mode's gain search."""
    monkeypatch.setattr(lazy_greedy, "_FRONTIER_SIZE", 8)
    monkeypatch.setattr(lazy_greedy, "_FRONTIER_SAMPLE", 16)
    monkeypatch.setattr(pull_order, "_PULL_BLOCK", 4)
    monkeypatch.setattr(pull_order, "_OVERFLOW_MIN", 2)
    monkeypatch.setattr(hard_search, "GIVE_UP", 3)
    monkeypatch.setattr(pull_order, "_RECENT_MAX", 2)
    config = dict(CONFIGS[config])
    params = config.pop("params")
    A, q, parents, levels, target = random_pool(3, n_samples=200, normalize=config.pop("normalize", True))
    problem = build_problem(A, q, parents, levels, **config)
    for k in (60, 200):
        lazy = select(problem, k, params, target if params.align != "none" else None)
        dense = select_dense(problem, k, params, target if params.align != "none" else None)
        np.testing.assert_array_equal(lazy.order, dense)


@pytest.mark.parametrize("align", ["none", "penalty", "hard", "quota"])
def test_lazy_equals_dense_with_many_exact_ties(align):
    A, q, parents, levels, _ = single_tag_pool(per_leaf=6)
    problem = build_problem(A, q, parents, levels)
    target = target_distribution(np.arange(12) % 3, alpha=0.5)
    params = TagsParams(align=align, kl_cap=0.2, kl_cap_start=0.5)
    for k in (5, 30, problem.n_samples):
        lazy = select(problem, k, params, target)
        np.testing.assert_array_equal(lazy.order, select_dense(problem, k, params, target))


def test_lazy_greedy_matches_a_brute_force_greedy_on_the_objective():
    A, q, parents, levels, target = random_pool(5, n_samples=60, duplicates=False)
    problem = build_problem(A, q, parents, levels)
    remaining, chosen = set(range(60)), []
    for _ in range(25):
        base = objective_of(problem, chosen)
        best = max(sorted(remaining), key=lambda i: objective_of(problem, chosen + [i]) - base)
        chosen.append(best)
        remaining.remove(best)
    assert select(problem, 25).order.tolist() == chosen

    # penalty mode maximises E(S)/E(pool) − λ·KL(t ‖ p_S), recomputed from scratch here
    lam, e_pool = 0.7, objective_of(problem, range(60))
    grounded = np.flatnonzero(np.diff(A.indptr) > 0)

    def F(rows):
        mass = np.asarray(A[list(rows)].sum(axis=0)).ravel() if rows else np.zeros(A.shape[1])
        return objective_of(problem, rows) / e_pool - lam * kl_divergence(target, mass)

    remaining, chosen = set(grounded.tolist()), []
    for _ in range(25):
        base = F(chosen)
        best = max(sorted(remaining), key=lambda i: F(chosen + [i]) - base)
        chosen.append(best)
        remaining.remove(best)
    assert select(problem, 25, TagsParams(align="penalty", lam=lam), target).order.tolist() == chosen


def test_same_seed_same_selection():
    def run(seed):
        A, q, parents, levels, target = random_pool(seed, n_samples=300)
        problem = build_problem(A, q, parents, levels)
        orders = [select(problem, 100, TagsParams(align=a), target).order for a in ("none", "penalty", "quota")]
        return hashlib.sha256(b"".join(o.tobytes() for o in orders)).hexdigest()

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_equal_quality_covers_all_leaves_before_repeating_one():
    A, q, parents, levels, leaves = single_tag_pool(per_leaf=5)
    for beta in ("uniform", "equal"):
        problem = build_problem(A, q, parents, levels, beta=beta)
        order = select(problem, 40).order
        first = leaves[order[:12]]
        assert sorted(first.tolist()) == list(range(12))  # 12 leaves, each once
        assert sorted(leaves[order[12:24]].tolist()) == list(range(12))  # then each a second time


def test_extreme_quality_skew_prefers_high_quality_items():
    per_leaf = 4
    A, _, parents, levels, leaves = single_tag_pool(per_leaf=per_leaf)
    quality = np.full(len(leaves), 1e-3)
    high = np.flatnonzero(np.arange(len(leaves)) // 12 == 2)  # one high-quality sample per leaf
    quality[high] = 1.0
    order = select(build_problem(A, quality, parents, levels), 20).order
    assert sorted(order[:12].tolist()) == high.tolist()
    # against several high-quality items on one leaf, a low-quality item elsewhere still loses at first
    quality = np.full(len(leaves), 1e-3)
    quality[leaves == 0] = 1.0
    order = select(build_problem(A, quality, parents, levels), 3).order
    assert (leaves[order] == 0).sum() >= 2


# --------------------------------------------------------------------------------------------------------------------
# alignment


@pytest.mark.parametrize("seed", [0, 1])
def test_closed_form_delta_kl_matches_recomputation(seed):
    A, _, _, _, target = random_pool(seed)
    rng = np.random.default_rng(seed)
    for size in (0, 1, 10, 60):
        mass = np.asarray(A[rng.choice(A.shape[0], size=size, replace=False)].sum(axis=0)).ravel()
        closed = delta_kl(A, mass, target)
        before = kl_divergence(target, mass)
        brute = [kl_divergence(target, mass + A[[i]].toarray().ravel()) - before for i in range(A.shape[0])]
        np.testing.assert_allclose(closed, brute, atol=1e-9, rtol=0)
    zero_target = target.copy()
    zero_target[:5] = 0
    zero_target /= zero_target.sum()
    closed = delta_kl(A, np.zeros(A.shape[1]), zero_target, rows=[0, 1, 2])
    brute = [kl_divergence(zero_target, A[[i]].toarray().ravel()) - kl_divergence(zero_target, np.zeros(A.shape[1])) for i in range(3)]
    np.testing.assert_allclose(closed, brute, atol=1e-9, rtol=0)


def misaligned_pool():
    """High quality sits on leaves 0–5 (subtree A), the target wants leaves 6–11 (subtree B)."""
    A, _, parents, levels, leaves = single_tag_pool(per_leaf=10)
    quality = np.where(leaves < 6, 1.0, 0.3)
    target = target_distribution(np.where(np.arange(12) < 6, 1.0, 9.0), alpha=0.1)
    return build_problem(A, quality, parents, levels), target, leaves


def test_kl_penalty_lowers_kl_and_more_so_as_lambda_grows():
    problem, target, _ = misaligned_pool()
    k = 40
    unaligned = select(problem, k, TagsParams(align="none"), target).kl[-1]
    kls = [select(problem, k, TagsParams(align="penalty", lam=lam), target).kl[-1] for lam in (0.0, 0.1, 0.3, 1.0, 3.0)]
    assert kls[0] == pytest.approx(unaligned, rel=1e-9)
    assert all(later <= earlier + 1e-12 for earlier, later in zip(kls, kls[1:]))
    assert kls[-1] < 0.5 * kls[0]
    # the information objective pays for it
    e = [select(problem, k, TagsParams(align="penalty", lam=lam), target).objective[-1] for lam in (0.0, 3.0)]
    assert e[1] < e[0]


def test_quota_mode_meets_quotas_exactly():
    A, q, parents, levels, target = random_pool(7, n_samples=400)
    problem = build_problem(A, q, parents, levels)
    primary = primary_leaves(A)
    for k in (50, 150):
        selection = select(problem, k, TagsParams(align="quota"), target)
        quotas = selection.info["quotas"]
        assert quotas.sum() == k
        np.testing.assert_array_equal(np.bincount(primary[selection.order], minlength=A.shape[1]), quotas)
        np.testing.assert_array_equal(quotas, leaf_quotas(k, target, np.bincount(primary[primary >= 0], minlength=A.shape[1])))


def test_quota_mode_fills_globally_when_target_leaves_run_out():
    problem, _, leaves = misaligned_pool()
    target = np.zeros(12)
    target[0] = 1.0  # only leaf 0 wanted, with 10 candidates
    selection = select(problem, 25, TagsParams(align="quota"), target)
    assert (leaves[selection.order[:10]] == 0).all() and selection.info["global_fill_from"] == 10
    np.testing.assert_array_equal(selection.order, select_dense(problem, 25, TagsParams(align="quota"), target))


def test_leaf_quotas_round_redistribute_and_cap():
    t = np.array([0.5, 0.3, 0.2])
    assert leaf_quotas(10, t).tolist() == [5, 3, 2]
    assert leaf_quotas(7, t).tolist() == [4, 2, 1]  # 3.5, 2.1, 1.4: the largest remainder rounds up
    assert leaf_quotas(10, t, capacity=[2, 10, 10]).tolist() == [2, 5, 3]  # 3 over leaf 0's cap go to 1, 2
    assert leaf_quotas(10, t, capacity=[1, 1, 1]).sum() == 3  # infeasible: everything available
    assert leaf_quotas(4, np.array([1.0, 0, 0]), capacity=[2, 5, 5]).tolist() == [2, 0, 0]


def test_hard_mode_keeps_kl_under_the_cap_once_it_can():
    problem, target, _ = misaligned_pool()
    params = TagsParams(align="hard", kl_cap=0.2, kl_cap_start=0.2)
    selection = select(problem, 40, params, target)
    unaligned = select(problem, 40, TagsParams(align="none"), target)
    assert selection.kl[-1] <= 0.2 < unaligned.kl[-1]
    # after the first pick under the cap, every later pick stays under it
    under = np.flatnonzero(selection.kl <= 0.2)
    assert (selection.kl[under[0] :] <= 0.2 + 1e-12).all()
    assert selection.info["fallback_picks"] >= 1


# hard mode: lazy search (pull order, class-memoised pulls, least-ΔKL frontier) = dense re-scan

HARD_CAPS = [
    dict(kl_cap=0.3, kl_cap_start=1.5, kl_cap_decay=0.5),  # decaying cap, binding part of the way
    dict(kl_cap=0.05, kl_cap_start=0.05),  # tight from the start: long stretches of least-KL fallbacks
    dict(kl_cap=0.0, kl_cap_start=0.0),  # never satisfiable: every pick is the least-KL row
    dict(kl_cap=50.0, kl_cap_start=50.0),  # never binds: plain greedy on the gain
    dict(kl_cap=0.2, kl_cap_start=3.0, kl_cap_decay=2.0),  # still decaying at the end of the budget
]


def _hard_pool(seed: int, normalize: bool, n_samples: int = 150):
    A, q, parents, levels, target = random_pool(seed, n_samples=n_samples, normalize=normalize)
    return build_problem(A, q, parents, levels), target


def _tiny_hard_structures(monkeypatch):
    """Blocks of 4 slots, merges and sorts after a few moved rows, the least ΔKL asked for early."""
    monkeypatch.setattr(pull_order, "_PULL_BLOCK", 4)
    monkeypatch.setattr(pull_order, "_OVERFLOW_MIN", 2)
    monkeypatch.setattr(pull_order, "_RECENT_MAX", 2)
    monkeypatch.setattr(hard_search, "GIVE_UP", 3)
    monkeypatch.setattr(lazy_greedy, "_FRONTIER_SIZE", 8)
    monkeypatch.setattr(lazy_greedy, "_FRONTIER_SAMPLE", 16)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("cap", range(len(HARD_CAPS)))
@pytest.mark.parametrize("seed", [10, 11, 12])
def test_hard_mode_equals_dense_on_random_pools(seed, cap, normalize):
    problem, target = _hard_pool(seed, normalize)
    params = TagsParams(align="hard", **HARD_CAPS[cap])
    for k in (40, problem.n_samples):
        lazy = select(problem, k, params, target)
        np.testing.assert_array_equal(lazy.order, select_dense(problem, k, params, target))
        np.testing.assert_allclose(lazy.scores, lazy.gains, rtol=1e-12, atol=0)  # hard mode reports the gain


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("seed", [20, 21, 22, 23])
def test_hard_mode_equals_dense_with_tiny_structures(seed, normalize, monkeypatch):
    _tiny_hard_structures(monkeypatch)
    problem, target = _hard_pool(seed, normalize, n_samples=250)
    for caps in HARD_CAPS:
        params = TagsParams(align="hard", **caps)
        for k in (70, problem.n_samples):
            np.testing.assert_array_equal(select(problem, k, params, target).order, select_dense(problem, k, params, target))


def test_hard_mode_fallback_and_unbound_cap():
    problem, target = _hard_pool(13, True)
    k = 80
    # a cap no selection can meet: every grounded pick is the row of least KL(t ‖ p_{S+i})
    never = select(problem, k, TagsParams(align="hard", kl_cap=0.0, kl_cap_start=0.0), target)
    assert never.info["fallback_picks"] == k
    np.testing.assert_array_equal(never.order, select_dense(problem, k, TagsParams(align="hard", kl_cap=0.0, kl_cap_start=0.0), target))
    # ... which is the greedy on −ΔKL, recomputed from scratch here (ties to the lowest row)
    A = problem.leaves
    grounded = np.flatnonzero(np.diff(A.indptr) > 0)
    mass, chosen = np.zeros(A.shape[1]), []
    for _ in range(10):
        rest = np.setdiff1d(grounded, chosen)
        dkl = delta_kl(A, mass, target, rows=rest)
        chosen.append(int(rest[np.argmin(dkl)]))
        mass += A[[chosen[-1]]].toarray().ravel()
    assert never.order[:10].tolist() == chosen
    # a cap that never binds: the greedy on the gain among the grounded rows
    loose = select(problem, k, TagsParams(align="hard", kl_cap=50.0, kl_cap_start=50.0), target)
    assert loose.info["fallback_picks"] == 0
    unaligned = select(problem, k, TagsParams(align="none"))
    positive = unaligned.gains > 0
    np.testing.assert_array_equal(loose.order[: positive.sum()], unaligned.order[positive][: positive.sum()])


@pytest.mark.parametrize("cap", [0.05, 0.2])
def test_hard_mode_equals_dense_with_identical_rows_and_tied_pulls(cap, monkeypatch):
    """Single-tag rows: many identical leaf rows (one pull class) and equal pulls across classes."""
    A, q, parents, levels, leaves = single_tag_pool(per_leaf=15)
    quality = np.random.default_rng(3).choice([0.2, 0.5, 1.0], size=len(leaves))
    problem = build_problem(A, quality, parents, levels)
    target = target_distribution(np.arange(12) % 4, alpha=0.2)
    params = TagsParams(align="hard", kl_cap=cap, kl_cap_start=4 * cap)
    for tiny in (False, True):
        if tiny:
            _tiny_hard_structures(monkeypatch)
        for k in (25, 90, problem.n_samples):
            np.testing.assert_array_equal(select(problem, k, params, target).order, select_dense(problem, k, params, target))


def test_identical_row_classes_are_exact_even_when_hashes_collide(monkeypatch):
    rng = np.random.default_rng(4)
    dense = rng.integers(0, 3, size=(200, 6)) * (rng.random((200, 6)) < 0.3)
    dense[50:60] = dense[5]
    matrix = sp.csr_array(dense.astype(float))
    rows = np.arange(200)
    same = (dense[:, None, :] == dense[None, :, :]).all(axis=2)
    classes, lead = pull_order.identical_rows(matrix, rows)
    np.testing.assert_array_equal(classes[:, None] == classes[None, :], same)
    np.testing.assert_array_equal(lead[classes], [int(np.flatnonzero(same[i])[0]) for i in rows])  # the lowest row
    # every row hashing alike: classes still hold identical rows only
    monkeypatch.setattr(pull_order, "row_digest", lambda columns, values, offsets, counts: np.zeros(len(counts), dtype=np.uint64))
    classes, lead = pull_order.identical_rows(matrix, rows)
    assert not ((classes[:, None] == classes[None, :]) & ~same).any()
    assert (dense[lead[classes]] == dense).all()


def test_target_distribution_smoothing_and_reachability():
    np.testing.assert_allclose(target_distribution([3, 0, 1], alpha=0.5), [3.5 / 5.5, 0.5 / 5.5, 1.5 / 5.5])
    np.testing.assert_allclose(target_distribution([3, 0, 1], alpha=0.5, reachable_mask=[True, False, True]), [3.5 / 5, 0, 1.5 / 5])
    with pytest.raises(ValueError):
        target_distribution([0, 0], alpha=0)


def test_ungrounded_samples_come_last_in_aligned_modes():
    A, q, parents, levels, target = random_pool(8, n_samples=80)
    problem = build_problem(A, q, parents, levels)
    ungrounded = np.flatnonzero(np.diff(A.indptr) == 0)
    assert len(ungrounded) > 0
    for align in ("penalty", "hard", "quota"):
        order = select(problem, 80, TagsParams(align=align, kl_cap=0.5), target).order
        assert order[-len(ungrounded) :].tolist() == ungrounded.tolist()


# --------------------------------------------------------------------------------------------------------------------
# diagnostics, helpers and edge cases


def test_diagnostics():
    levels = np.array([1, 1, 1, 2, 3])
    assert coverage_by_level([0.0, 2.0, 1.0, 0.0, 3.0], levels) == {1: pytest.approx(2 / 3), 2: 0.0, 3: 1.0}
    assert leaf_entropy([1, 1, 0, 2]) == pytest.approx(-(2 * 0.25 * np.log(0.25) + 0.5 * np.log(0.5)))
    assert leaf_entropy([0, 0]) == 0.0
    t = np.array([0.5, 0.5, 0.0])
    assert kl_divergence(t, [1000.0, 1000.0, 0.0]) == pytest.approx(0.0, abs=1e-5)
    assert kl_divergence(t, [1.0, 0.0, 0.0], eps=1e-3) > 1.0


def test_rank_normalize():
    r = rank_normalize([3.0, 1.0, 2.0, 2.0])
    np.testing.assert_allclose(r, [1.0, 0.25, 0.625, 0.625])
    assert (r > 0).all() and (r <= 1).all()
    with pytest.raises(ValueError, match=r"\[1\]"):
        rank_normalize([1.0, np.nan])


def test_budget_edges_and_bad_inputs():
    A, q, parents, levels, target = random_pool(9, n_samples=30)
    problem = build_problem(A, q, parents, levels)
    empty = select(problem, 0, TagsParams(), target)
    assert empty.order.shape == (0,) and empty.objective.shape == (0,) and empty.top_nodes.shape == (0, 3)
    for align in ("none", "penalty", "hard", "quota"):
        everything = select(problem, 1000, TagsParams(align=align), target).order
        assert sorted(everything.tolist()) == list(range(30))
    with pytest.raises(ValueError, match="k must be >= 0"):
        select(problem, -1)
    with pytest.raises(ValueError, match="empty pool"):
        build_problem(sp.csr_array((0, A.shape[1])), [], parents, levels)
    bad = q.copy()
    bad[[2, 7]] = [-1.0, np.nan]
    with pytest.raises(ValueError, match=r"indices \[2, 7\]"):
        build_problem(A, bad, parents, levels)
    with pytest.raises(ValueError, match="distribution"):
        select(problem, 3, TagsParams(), target[:-1])
    with pytest.raises(ValueError, match="align"):
        TagsParams(align="soft")


def test_end_to_end_from_a_built_tree():
    from mig_assets.core.tags.build import build_tree
    from mig_assets.core.tags.grounding import ground_tags

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 12))
    embeddings = centres[np.arange(80) % 8] + 0.2 * rng.normal(size=(80, 12))
    names = [f"tag {i}" for i in range(80)]
    tree = build_tree(names, embeddings, branching=4, top_size=3)
    tag_lists = [rng.choice(80, size=rng.integers(1, 4), replace=False) for _ in range(200)]
    flat = [names[t] for tags in tag_lists for t in tags]
    leaf_ids = ground_tags(tree, flat).leaf_ids
    indptr = np.concatenate([[0], np.cumsum([len(t) for t in tag_lists])])
    A = leaf_weights(indptr, leaf_ids, tree.n_leaves)
    problem = build_problem(A, rank_normalize(rng.random(200)), tree.parents, tree.levels)
    target = target_distribution(np.asarray(A[:20].sum(axis=0)).ravel())
    selection = select(problem, 50, TagsParams(align="penalty"), target)
    np.testing.assert_array_equal(selection.order, select_dense(problem, 50, TagsParams(align="penalty"), target))
    coverage = coverage_by_level(selection.coverage, tree.levels)
    assert coverage[1] > 0.5 and coverage[tree.depth] == 0.0  # the root is left out of U


def test_pairwise_exact_duplicates_are_picked_in_index_order():
    A, q, parents, levels, _ = single_tag_pool(per_leaf=1)
    A = sp.csr_array(sp.vstack([A, A]))  # rows r and r + 12 are identical
    problem = build_problem(A, np.ones(24), parents, levels)
    order = select(problem, 24).order
    for r in range(12):
        assert np.flatnonzero(order == r)[0] < np.flatnonzero(order == r + 12)[0]
    assert len(set((order[:12] % 12).tolist())) == 12  # every leaf once before any twin


@pytest.mark.parametrize("align", ["penalty", "hard"])
def test_many_row_masses_fall_back_to_exact_rescans(align, monkeypatch):
    monkeypatch.setattr(modes, "_MAX_MASS_GROUPS", 1)
    A, q, parents, levels, target = random_pool(6, normalize=False)  # masses 1 .. 5: five groups
    problem = build_problem(A, q, parents, levels)
    params = TagsParams(align=align, kl_cap=0.3, kl_cap_start=1.0)
    selection = select(problem, 50, params, target)
    assert selection.info["dense_fallback"]
    np.testing.assert_array_equal(selection.order, select_dense(problem, 50, params, target))
    monkeypatch.setattr(modes, "_MAX_MASS_GROUPS", 64)
    np.testing.assert_array_equal(select(problem, 50, params, target).order, selection.order)
