"""Tests of the baseline selectors: hand-worked and brute-force answers, determinism, prefixes, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from mig_assets.core.selection import baselines
from mig_assets.core.selection.baselines import (
    deita_filter,
    instag_sampling,
    k_center_greedy,
    top_quality,
)


def clustered(seed: int, n: int = 80, dim: int = 6, n_centers: int = 5, noise: float = 0.35) -> np.ndarray:
    """Unnormalised points around a few random directions, so that many pairs are near-duplicates."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_centers, dim))
    return (centers[rng.integers(n_centers, size=n)] + noise * rng.normal(size=(n, dim))) * rng.uniform(0.5, 3, (n, 1))


def cosine(embeddings) -> np.ndarray:
    unit = baselines.unit_rows(np.asarray(embeddings), np.float64)
    return unit @ unit.T


# ---------------------------------------------------------------------------------------------------------------------
# top_quality


def test_top_quality_orders_by_score_ties_to_lowest_row():
    scores = [0.5, 2.0, 2.0, -1.0, 3.0]
    assert top_quality(scores, 5).tolist() == [4, 1, 2, 0, 3]
    assert top_quality(scores, 2).tolist() == [4, 1]
    assert top_quality(scores, 10).tolist() == [4, 1, 2, 0, 3]
    empty = top_quality(scores, 0)
    assert empty.dtype == np.int64 and empty.shape == (0,)


# ---------------------------------------------------------------------------------------------------------------------
# deita_filter

HAND_EMBEDDINGS = np.array(
    [
        [1.0, 0.0],  # 0: score 5, visited first: accepted
        [10.0, 1.0],  # 1: score 4, cos with row 0 = 10/√101 ≈ 0.995 > 0.9: a near-duplicate, skipped
        [0.0, 1.0],  # 2: score 3, cos 0 with row 0: accepted
        [1.0, 1.0],  # 3: score 2, cos ≈ 0.707 with rows 0 and 2: accepted
        [0.0, 0.0],  # 4: score 1, a zero vector has cosine 0 with everything: accepted
        [-3.0, 0.0],  # 5: score 1 (tie with row 4, visited after it), cos −1 with row 0: accepted
    ]
)
HAND_SCORES = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 1.0])


def test_deita_filter_skips_a_near_duplicate_and_stops_short():
    assert deita_filter(HAND_SCORES, HAND_EMBEDDINGS, 3).tolist() == [0, 2, 3]
    # one row is filtered out: only 5 rows pass, fewer than k, and Deita stops there
    assert deita_filter(HAND_SCORES, HAND_EMBEDDINGS, 10).tolist() == [0, 2, 3, 4, 5]
    # a looser threshold keeps row 1 (0.995 <= 0.999); row 3 has cos 11/(√101·√2) ≈ 0.774 with it
    assert deita_filter(HAND_SCORES, HAND_EMBEDDINGS, 10, threshold=0.999).tolist() == [0, 1, 2, 3, 4, 5]
    # threshold 0: only rows with cos <= 0 to every accepted row; row 3 is rejected now
    assert deita_filter(HAND_SCORES, HAND_EMBEDDINGS, 10, threshold=0.0).tolist() == [0, 2, 4, 5]


def test_deita_filter_keeps_similarity_equal_to_threshold():
    # Deita rejects only when max similarity > threshold: cos((1,0),(0,1)) = 0 is not > 0
    assert deita_filter([2.0, 1.0], [[1.0, 0.0], [0.0, 1.0]], 2, threshold=0.0).tolist() == [0, 1]
    assert deita_filter([2.0, 1.0], [[1.0, 0.0], [1.0, 1.0]], 2, threshold=0.5).tolist() == [0]


def deita_reference(scores, embeddings, k, threshold):
    """Deita's loop, one candidate at a time against every accepted row (float64 similarities)."""
    unit = baselines.unit_rows(np.asarray(embeddings), np.float64)
    kept = []
    for row in np.argsort(-np.asarray(scores), kind="stable").tolist():
        if len(kept) == k:
            break
        if not kept or (unit[kept] @ unit[row]).max() <= threshold:
            kept.append(row)
    return kept


@pytest.mark.parametrize("block", [1, 3, 7, 1024])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deita_filter_matches_the_one_by_one_loop(monkeypatch, block, seed):
    embeddings = clustered(seed)
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 20, size=len(embeddings)).astype(float)  # many ties
    threshold = 0.9
    # the data keep away from the threshold, so float32 vs float64 cannot flip a decision
    assert np.abs(cosine(embeddings) - threshold).min() > 1e-5  # float32 error is ~1e-7
    monkeypatch.setattr(baselines, "_DEITA_BLOCK", block)
    for k in (0, 1, 5, 12, 200):
        expected = deita_reference(scores, embeddings, k, threshold)
        assert deita_filter(scores, embeddings, k, threshold).tolist() == expected
    assert len(deita_reference(scores, embeddings, 200, threshold)) < len(embeddings)  # some were filtered


def test_deita_filter_is_deterministic_and_prefix_consistent():
    embeddings = clustered(5, n=300, dim=16)
    scores = np.random.default_rng(5).normal(size=300)
    full = deita_filter(scores, embeddings, 300, threshold=0.8)
    assert np.array_equal(full, deita_filter(scores, embeddings, 300, threshold=0.8))
    assert full.dtype == np.int64
    for k in (1, 10, len(full) - 1):
        assert np.array_equal(deita_filter(scores, embeddings, k, threshold=0.8), full[:k])
    # accepted rows are pairwise within the threshold
    sims = cosine(embeddings[full])
    assert (sims[np.triu_indices(len(full), 1)] <= 0.8 + 1e-6).all()


def test_deita_filter_exact_duplicates_are_filtered():
    embeddings = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 2.0, 3.0], [3.0, -1.0, 0.0]])
    assert deita_filter([1.0, 1.0, 1.0, 1.0], embeddings, 4).tolist() == [0, 3]


# ---------------------------------------------------------------------------------------------------------------------
# instag_sampling

HAND_TAGS = [
    ["a"],  # 0: 1 tag
    ["a", "b", "c"],  # 1: 3 tags
    ["b", "d", "d"],  # 2: 2 distinct tags (the repeat counts once)
    ["c", "d", "e"],  # 3: 3 tags
    ["a", "b"],  # 4: 2 tags
    [],  # 5: no tags: never brings a new tag, never picked
    ["e", "f"],  # 6: 2 tags
    ["a", "c"],  # 7: 2 tags
]
# Sorted by tag count, descending, ties to the lowest row: 1, 3, 2, 4, 6, 7, 0, 5.
# Pass 1 (seen = {}): 1 brings a,b,c -> pick; 3 brings d,e -> pick; 2 {b,d} and 4 {a,b} are covered;
#   6 brings f -> pick; 7, 0 covered; 5 has nothing. Picks 1, 3, 6.
# Pass 2 (seen reset, left: 2, 4, 7, 0): 2 brings b,d -> pick; 4 brings a -> pick; 7 brings c -> pick;
#   0 {a} covered. Picks 2, 4, 7.
# Pass 3 (left: 0): 0 brings a -> pick. Only the untagged row 5 is left: the walk stops with 7 rows.
HAND_ORDER = [1, 3, 6, 2, 4, 7, 0]


def test_instag_sampling_hand_example():
    assert instag_sampling(HAND_TAGS, 20).tolist() == HAND_ORDER
    for k in range(len(HAND_ORDER) + 1):
        assert instag_sampling(HAND_TAGS, k).tolist() == HAND_ORDER[:k]
    assert instag_sampling(HAND_TAGS, 0).dtype == np.int64


def instag_reference(tags, k):
    """Algorithm 1 as the spec writes it, with no shortcut: full passes over the remaining pool."""
    sets = [set(t) for t in tags]
    pool = sorted(range(len(tags)), key=lambda i: -len(sets[i]))
    selected = []
    while len(selected) < k:
        seen, before = set(), len(selected)
        for item in list(pool):
            if not sets[item] <= seen:
                selected.append(item)
                seen |= sets[item]
                pool.remove(item)
                if len(selected) == k:
                    break
        if len(selected) == before:  # nothing left can bring a tag
            break
    return selected


@pytest.mark.parametrize("seed", range(6))
def test_instag_sampling_matches_the_spec_loop(seed):
    rng = np.random.default_rng(seed)
    vocabulary = [f"tag {j}" for j in range(int(rng.integers(3, 30)))]
    popularity = 1.0 / np.arange(1, len(vocabulary) + 1)
    popularity /= popularity.sum()
    tags = [[vocabulary[j] for j in rng.choice(len(vocabulary), size=int(rng.integers(0, 7)), p=popularity)] for _ in range(int(rng.integers(1, 150)))]
    for k in (1, 7, 40, len(tags), len(tags) + 5):
        result = instag_sampling(tags, k)
        assert result.tolist() == instag_reference(tags, k)
        assert len(set(result.tolist())) == len(result)


def test_instag_sampling_covers_every_tag_first():
    tags = [["x", "y"], ["x"], ["z"], ["y"], ["w", "x", "y"]]
    order = instag_sampling(tags, 2).tolist()
    assert order == [4, 2]  # 3 tags first, then the only row with z
    assert set().union(*(tags[i] for i in order)) == {"w", "x", "y", "z"}


def test_instag_sampling_rejects_bad_tags():
    with pytest.raises(ValueError, match="sample 1's tags must be a list of tag strings"):
        instag_sampling([["a"], "ab"], 1)
    with pytest.raises(ValueError, match="sample 0's tags must all be strings"):
        instag_sampling([["a", 3]], 1)


# ---------------------------------------------------------------------------------------------------------------------
# k_center_greedy


def k_center_reference(embeddings, k, first):
    """Farthest-first from the full distance matrix: argmax over unchosen rows of the min distance to chosen."""
    distance = 1.0 - cosine(embeddings)
    chosen = [first]
    while len(chosen) < k:
        rest = [i for i in range(len(embeddings)) if i not in chosen]
        chosen.append(max(rest, key=lambda i: (distance[i, chosen].min(), -i)))
    return chosen


@pytest.mark.parametrize("seed", range(5))
def test_k_center_matches_brute_force_farthest_first(seed):
    embeddings = np.random.default_rng(100 + seed).normal(size=(8, 3))
    first = int(np.random.default_rng(seed).integers(8))
    for k in range(9):
        assert k_center_greedy(embeddings, k, seed=seed).tolist() == k_center_reference(embeddings, k, first)[:k]


def test_k_center_hand_example():
    # directions 0°, 30°, 90°, 180°, 200° (lengths vary: only directions count); d = 1 − cos(angle between)
    angles = np.radians([0.0, 30.0, 90.0, 180.0, 200.0])
    embeddings = np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.arange(1, 6)[:, None]
    assert int(np.random.default_rng(0).integers(5)) == 4  # seed 0 starts at row 4 (200°)
    # from 200°: row 0 at 200° apart (d 1.940), row 1 at 170° (1.985), row 2 at 110° (1.342), row 3 at 20°
    #   (0.060): row 1. Min distances now: row 0 0.134 (30° from row 1), row 2 0.5 (60°), row 3 0.060: row 2.
    # Then row 0 keeps 0.134, row 3 0.060: row 0, then row 3.
    assert k_center_greedy(embeddings, 5, seed=0).tolist() == [4, 1, 2, 0, 3]


def test_k_center_ties_go_to_the_lowest_row_and_duplicates_come_last():
    embeddings = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [-1.0, 0.0]])
    # start at row 4 (seed 0); rows 0 and 1 tie at distance 2: row 0. Then row 2 (distance 1, row 3 ties
    # with it: the lowest row). Rows 1 and 3 are exact duplicates of chosen rows (distance 0): row 1, row 3.
    assert k_center_greedy(embeddings, 5, seed=0).tolist() == [4, 0, 2, 1, 3]


def test_k_center_is_deterministic_and_prefix_consistent():
    embeddings = clustered(3, n=200, dim=10)
    full = k_center_greedy(embeddings, 200, seed=7)
    assert np.array_equal(full, k_center_greedy(embeddings, 200, seed=7))
    assert sorted(full.tolist()) == list(range(200))
    assert np.array_equal(k_center_greedy(embeddings, 30, seed=7), full[:30])
    starts = {int(k_center_greedy(embeddings, 1, seed=s)[0]) for s in range(10)}
    assert len(starts) > 1  # the seed chooses the start


def test_k_center_zero_rows_are_at_distance_one():
    embeddings = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 0.0], [1.0, 0.05]])
    # start at row 3 (seed 0); the zero row 2 is at distance 1 from it, row 1 at 0.0018, row 0 at 0.00125
    assert k_center_greedy(embeddings, 4, seed=0).tolist() == [3, 2, 1, 0]


# ---------------------------------------------------------------------------------------------------------------------
# edge cases shared by every selector

SELECTORS = {
    "top_quality": lambda scores, emb, tags, k: top_quality(scores, k),
    "deita_filter": lambda scores, emb, tags, k: deita_filter(scores, emb, k),
    "instag_sampling": lambda scores, emb, tags, k: instag_sampling(tags, k),
    "k_center_greedy": lambda scores, emb, tags, k: k_center_greedy(emb, k),
}


@pytest.mark.parametrize("name", SELECTORS)
def test_budgets_zero_and_above_the_pool(name):
    select = SELECTORS[name]
    embeddings = np.eye(4)
    tags = [["a"], ["b"], ["c"], ["d"]]
    scores = np.array([1.0, 4.0, 2.0, 3.0])
    none = select(scores, embeddings, tags, 0)
    assert none.dtype == np.int64 and none.shape == (0,)
    everything = select(scores, embeddings, tags, 99)
    assert everything.dtype == np.int64 and sorted(everything.tolist()) == [0, 1, 2, 3]
    assert np.array_equal(everything, select(scores, embeddings, tags, 99))
    with pytest.raises(ValueError, match="k must be >= 0"):
        select(scores, embeddings, tags, -1)


@pytest.mark.parametrize("name", SELECTORS)
def test_empty_pool_is_an_error(name):
    with pytest.raises(ValueError, match="empty pool"):
        SELECTORS[name](np.empty(0), np.empty((0, 3)), [], 3)


def test_bad_scores_and_embeddings_are_errors():
    with pytest.raises(ValueError, match=r"scores must be finite; 1 are not, at sample indices \[1\]"):
        top_quality([1.0, np.nan, 2.0], 2)
    with pytest.raises(ValueError, match=r"at sample indices \[0\]"):
        deita_filter([np.inf, 1.0], np.eye(2), 1)
    with pytest.raises(ValueError, match="expected 3 scores"):
        deita_filter([1.0, 2.0], np.eye(3), 1)
    with pytest.raises(ValueError, match="1-D"):
        top_quality([[1.0, 2.0]], 1)
    with pytest.raises(ValueError, match="2-D"):
        k_center_greedy(np.ones(4), 1)
    with pytest.raises(ValueError, match=r"embeddings must be finite; offending rows \[1\]"):
        k_center_greedy([[1.0, 0.0], [np.nan, 1.0]], 1)
    with pytest.raises(ValueError, match=r"threshold must be a cosine similarity in \[-1, 1\]"):
        deita_filter([1.0, 2.0], np.eye(2), 1, threshold=1.5)
