"""Tests of the selection-comparison metrics: hand-computed values, agreement with the selectors' own objectives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from mig_assets.core.mig.algorithm import select
from mig_assets.core.mig.problem import MigParams
from mig_assets.core.selection.compare import (
    compare_selections,
    embedding_diversity,
    guarantees,
    kl_to_target,
    label_coverage,
    leaf_coverage,
    mean_quality,
    mig_objective,
    overlap,
    tags_objective,
)
from mig_assets.core.tags import modes as tags_modes
from mig_assets.core.tags.information import kl_divergence, objective
from mig_assets.core.tags.params import TagsParams
from mig_assets.core.tags.problem import build_problem

# a tiny tree: leaves 0, 1, 2; node 3 is the parent of leaves 0 and 1; node 4 (root) the parent of 3 and 2
PARENTS = np.array([3, 3, 4, 4, -1])
LEVELS = np.array([1, 1, 1, 2, 3])
LEAVES = sp.csr_array(
    np.array(
        [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.0],
            [0.0, 0.0, 1.0],
            [0.0, 0.0, 0.0],  # no grounded tag
        ]
    )
)
QUALITY = np.array([1.0, 2.0, 0.5, 1.0])


def tags_problem():
    return build_problem(LEAVES, QUALITY, PARENTS, LEVELS, gamma=0.5)


def test_mig_objective_hand_computed():
    Y = sp.csr_array(np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 2.0]], dtype=np.float32))
    params = MigParams()
    a, b = params.phi_a, params.phi_b
    # s = Y_0 + Y_2 = (1, 2): E = (1 + a)^b + (2 + a)^b
    assert mig_objective(Y, [2, 0], params) == pytest.approx((1 + a) ** b + (2 + a) ** b, rel=1e-12)
    # nothing selected: every label counts φ(0) = a^b
    assert mig_objective(Y, [], params) == pytest.approx(2 * a**b, rel=1e-12)
    exp = MigParams(phi="exp", phi_alpha=2.0)
    assert mig_objective(Y, [1], exp) == pytest.approx(2 * (1 - math.exp(-1.0)), rel=1e-12)


def test_mig_objective_matches_the_greedy_objective():
    rng = np.random.default_rng(0)
    dense = rng.random((60, 15)) * (rng.random((60, 15)) < 0.3)
    Y = sp.csr_array(dense.astype(np.float32))
    for params in (MigParams(), MigParams(gain="exact"), MigParams(phi="exp", phi_alpha=0.5)):
        result = select(Y, 12, params)
        assert mig_objective(Y, result.order, params) == pytest.approx(result.objective[-1], rel=1e-6)
        assert mig_objective(Y, result.order[::-1], params) == mig_objective(Y, result.order, params)


def test_tags_objective_calls_the_tags_objective():
    problem = tags_problem()
    for rows in ([0], [1, 2], [3], [0, 1, 2, 3], []):
        assert tags_objective(problem, rows) == objective(problem, np.array(rows, dtype=np.int64))
    params = TagsParams(phi_a=1e-3, phi_b=0.5)
    assert tags_objective(problem, [0, 2], params) == objective(problem, [0, 2], 1e-3, 0.5)
    result = tags_modes.select(problem, 3, TagsParams(align="none"))
    assert tags_objective(problem, result.order) == pytest.approx(result.objective[-1], rel=1e-12)


def test_coverages_hand_computed():
    X = sp.csr_array(
        np.array(
            [
                [1, 1, 0, 0, 0],
                [0, 1, 1, 0, 0],
                [0, 0, 0, 1, 0],
            ],
            dtype=np.float32,
        )
    )  # label 4 is carried by no sample: it stays in the denominator
    assert label_coverage(X, [0]) == pytest.approx(2 / 5)
    assert label_coverage(X, [0, 1]) == pytest.approx(3 / 5)
    assert label_coverage(X, [0, 1, 2]) == pytest.approx(4 / 5)
    assert label_coverage(X, []) == 0.0
    assert label_coverage(X.toarray(), [1, 2]) == pytest.approx(3 / 5)  # dense input works too
    assert leaf_coverage(LEAVES, [0]) == pytest.approx(1 / 3)
    assert leaf_coverage(LEAVES, [1, 3]) == pytest.approx(2 / 3)
    assert leaf_coverage(LEAVES, [0, 1, 2]) == pytest.approx(1.0)
    explicit_zero = sp.csr_array((np.array([0.0, 1.0]), (np.array([0, 0]), np.array([0, 1]))), shape=(1, 3))
    assert label_coverage(explicit_zero, [0]) == pytest.approx(1 / 3)  # a stored 0 covers nothing


def test_mean_quality():
    scores = np.array([1.0, 2.0, 4.0, 8.0])
    assert mean_quality(scores, [1, 3]) == pytest.approx(5.0)
    assert mean_quality(scores, np.array([0], dtype=np.int32)) == 1.0
    assert math.isnan(mean_quality(scores, []))
    with pytest.raises(ValueError, match="scores must be finite"):
        mean_quality([1.0, np.nan], [0])


def brute_force_diversity(embeddings, rows):
    unit = np.asarray(embeddings, dtype=np.float64)[rows]
    norms = np.linalg.norm(unit, axis=1, keepdims=True)
    unit = np.divide(unit, norms, out=np.zeros_like(unit), where=norms > 0)
    distances = [1.0 - unit[i] @ unit[j] for i in range(len(rows)) for j in range(i + 1, len(rows))]
    return float(np.mean(distances))


def test_embedding_diversity_hand_computed_and_brute_force():
    embeddings = np.array([[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0], [0.0, 0.0]])
    # pairs of rows 0, 1, 2: distances 1 (0-1), 2 (0-2), 1 (1-2): mean 4/3
    assert embedding_diversity(embeddings, [0, 1, 2]) == pytest.approx(4 / 3)
    assert embedding_diversity(embeddings, [0, 2]) == pytest.approx(2.0)
    # a zero row is at distance 1 from every row
    assert embedding_diversity(embeddings, [0, 3]) == pytest.approx(1.0)
    assert math.isnan(embedding_diversity(embeddings, [1]))
    assert math.isnan(embedding_diversity(embeddings, []))
    rng = np.random.default_rng(1)
    cloud = rng.normal(size=(300, 24)) + 0.5
    cloud[7] = 0.0
    for rows in (rng.choice(300, 2, replace=False), rng.choice(300, 40, replace=False), np.arange(300)):
        assert embedding_diversity(cloud, rows) == pytest.approx(brute_force_diversity(cloud, rows), abs=1e-12)
    duplicates = np.tile([[1.0, 2.0, 3.0]], (50, 1))
    assert embedding_diversity(duplicates, np.arange(50)) == pytest.approx(0.0, abs=1e-12)


def test_kl_to_target_matches_kl_divergence():
    target = np.array([0.5, 0.3, 0.2])
    for rows, eps in (([0, 1], 1e-3), ([2], 1e-3), ([0, 1, 2, 3], 0.1), ([], 1e-3)):
        mass = LEAVES.toarray()[rows].sum(axis=0) if rows else np.zeros(3)
        expected = kl_divergence(target, mass, eps)
        assert kl_to_target(LEAVES, rows, target, eps) == pytest.approx(expected, rel=1e-12)
    # rows 0, 1: m = (1.5, 0.5, 0), p = (m + ε)/(2 + 3ε)
    m = np.array([1.5, 0.5, 0.0])
    p = (m + 1e-3) / (2 + 3e-3)
    assert kl_to_target(LEAVES, [1, 0], target) == pytest.approx(float(np.sum(target * np.log(target / p))))
    with pytest.raises(ValueError, match=r"one weight per leaf \(3\)"):
        kl_to_target(LEAVES, [0], [0.5, 0.5])


def test_overlap_jaccard():
    orders = {"a": np.array([0, 1, 2, 3]), "b": np.array([2, 3, 4]), "c": np.array([], dtype=np.int64), "d": [9]}
    jaccard = overlap(orders)
    assert jaccard["a", "b"] == pytest.approx(2 / 5)
    assert jaccard["a", "c"] == 0.0
    assert jaccard["c", "c"] == 1.0
    assert jaccard["b", "d"] == 0.0
    for x in orders:
        assert jaccard[x, x] == 1.0
        for y in orders:
            assert jaccard[x, y] == jaccard[y, x]
    assert len(jaccard) == len(orders) ** 2


def test_compare_selections_rows():
    problem = tags_problem()
    Y = sp.csr_array(np.array([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=np.float32))
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    target = np.array([0.2, 0.3, 0.5])
    orders = {"first": np.array([1, 0]), "second": np.array([2, 3, 0])}
    table = compare_selections(
        orders,
        Y=Y,
        tags_problem=problem,
        target=target,
        scores=QUALITY,
        embeddings=embeddings,
        label_matrix=Y,
    )
    assert [row["method"] for row in table] == ["first", "second"]
    first = table[0]
    assert first["size"] == 2
    assert first["mig_objective"] == mig_objective(Y, [1, 0])
    assert first["tags_objective"] == tags_objective(problem, [1, 0])
    assert first["label_coverage"] == 1.0
    assert first["leaf_coverage"] == pytest.approx(2 / 3)  # leaves from tags_problem.leaves
    assert first["kl_to_target"] == kl_to_target(LEAVES, [1, 0], target)
    assert first["mean_quality"] == pytest.approx(1.5)
    assert first["embedding_diversity"] == pytest.approx(1.0)
    assert first["jaccard"] == {"second": pytest.approx(1 / 4)}
    assert table[1]["jaccard"] == {"first": pytest.approx(1 / 4)}

    bare = compare_selections(orders)
    assert set(bare[0]) == set(first)
    assert all(bare[0][key] is None for key in first if key not in ("method", "size", "jaccard"))
    only_leaves = compare_selections(orders, leaf_matrix=LEAVES)[1]  # rows 2, 3, 0: leaves 2 and 0
    assert only_leaves["leaf_coverage"] == pytest.approx(2 / 3) and only_leaves["kl_to_target"] is None

    eps_params = TagsParams(eps=0.5)
    row = compare_selections(orders, leaf_matrix=LEAVES, target=target, tags_params=eps_params)[0]
    assert row["kl_to_target"] == kl_to_target(LEAVES, [0, 1], target, eps=0.5)
    mig_params = MigParams(phi="exp")
    assert compare_selections(orders, Y=Y, mig_params=mig_params)[0]["mig_objective"] == mig_objective(Y, [0, 1], mig_params)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([0, 0], r"distinct; repeated \[0\]"),
        ([0, 7], r"rows must lie in \[0, 3\); got \[7\]"),
        ([-1], r"rows must lie in \[0, 3\); got \[-1\]"),
        ([0.0, 1.0], "integer row indices"),
        ([[0, 1]], "1-D"),
    ],
)
def test_bad_rows_are_errors(rows, message):
    scores = np.array([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=message):
        mean_quality(scores, rows)


def test_mismatched_inputs_are_errors():
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 2\)"):
        embedding_diversity(np.eye(2), [0, 2])
    with pytest.raises(ValueError, match="Y must be finite and non-negative"):
        mig_objective(sp.csr_array(np.array([[-1.0]])), [0])
    with pytest.raises(ValueError, match="leaf_matrix must be finite and non-negative"):
        kl_to_target(np.array([[-1.0, 1.0]]), [0], [0.5, 0.5])
    with pytest.raises(ValueError, match="distinct"):
        overlap({"a": [1, 1]})
    with pytest.raises(ValueError, match="no columns"):
        label_coverage(np.zeros((3, 0)), [0])


def test_guarantees_claim_the_greedy_bound_only_for_exact_gains():
    rng = np.random.default_rng(3)
    Y = sp.csr_array(rng.random((60, 12)) * (rng.random((60, 12)) < 0.3))
    exact = MigParams(gain="exact")
    orders = {"mig": select(Y, 5, exact).order, **{f"random{s}": np.random.default_rng(s).choice(60, 5, replace=False) for s in range(5)}}
    table = compare_selections(orders, Y=Y, mig_params=exact)
    [claim] = guarantees(table, exact)
    best_other = max(r["mig_objective"] for r in table if r["method"] != "mig")
    assert claim["holds"] is True and table[0]["mig_objective"] >= (1 - 1 / math.e) * best_other
    [gradient] = guarantees(table, MigParams())
    assert gradient["holds"] is None and "no bound on E(S) is claimed" in gradient["claim"]
    # a figure below the bound is reported as not holding
    broken = [{"method": "tags", "tags_objective": 0.5}, {"method": "random", "tags_objective": 1.0}]
    [tags_claim] = guarantees(broken)
    assert tags_claim["holds"] is False and tags_claim["rank"] == 2
