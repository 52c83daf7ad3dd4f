"""Near-duplicate detection as plain functions: shingles, MinHash LSH pairs, faiss pairs, clusters
and their representatives, and the incremental per-shard state."""

import numpy as np
import pyarrow.parquet as pq

from mig_assets.core.curation.near_duplicate_state import PoolPoints, refresh_pairs, state_file
from mig_assets.core.curation.near_duplicates import (
    EmbeddingParams,
    MinHashParams,
    clusters,
    cosine,
    embedding_pairs,
    minhash_pairs,
    minhash_signatures,
    shingles,
)

WORDS = [f"word{i}" for i in range(5000)]


def random_texts(n: int, seed: int = 0, length: int = 80) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=length)) for _ in range(n)]


def small_edit(text: str, seed: int) -> str:
    """One word replaced, the case of another changed, punctuation and spacing added."""
    rng = np.random.default_rng(seed)
    words = text.split()
    words[int(rng.integers(len(words)))] = "changed"
    words[0] = words[0].upper()
    return "  ".join(words) + "?!"


def pairs_of(left, right) -> set[tuple[int, int]]:
    return set(zip(left.tolist(), right.tolist()))


def test_shingles_normalize_case_punctuation_and_short_texts():
    assert shingles("Hello, WORLD! How are you", 3) == ["hello world how", "world how are", "how are you"]
    assert shingles("Hello   world", 3) == ["hello world"]
    assert shingles(" ?! ", 3) == []
    assert shingles("a b a b a b", 2) == ["a b", "b a"]  # distinct, first-seen order


def test_planted_lexical_near_copies_are_found_and_nothing_else():
    texts = random_texts(300)
    sources = range(0, 60, 3)
    texts += [small_edit(texts[k], k) for k in sources]  # rows 300.. edit rows 0, 3, 6, ...
    planted = {(k, 300 + i) for i, k in enumerate(sources)}
    params = MinHashParams()
    signatures, has_words = minhash_signatures(texts, params)
    left, right, similarity = minhash_pairs(signatures, has_words, np.arange(len(texts)), params)
    assert pairs_of(left, right) == planted
    assert (similarity >= params.threshold).all()
    again = minhash_signatures(texts, params)[0]
    assert np.array_equal(signatures, again)  # deterministic for a seed


def test_lexical_queries_only_look_up_their_rows_but_find_pairs_with_all():
    texts = random_texts(50, seed=1)
    texts.append(small_edit(texts[3], 7))  # row 50 copies row 3
    params = MinHashParams()
    signatures, has_words = minhash_signatures(texts, params)
    left, right, _ = minhash_pairs(signatures, has_words, np.array([50]), params)
    assert pairs_of(left, right) == {(3, 50)}
    left, right, _ = minhash_pairs(signatures, has_words, np.array([10, 11]), params)
    assert len(left) == 0


def test_texts_without_words_are_never_near_copies():
    params = MinHashParams()
    signatures, has_words = minhash_signatures(["?!", "...", "real words here and there"], params)
    assert has_words.tolist() == [False, False, True]
    left, _, _ = minhash_pairs(signatures, has_words, np.arange(3), params)
    assert len(left) == 0


def unit_vectors(n: int, dimension: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def planted_vectors(n: int, copies: int, seed: int = 0):
    vectors = unit_vectors(n, seed=seed)
    rng = np.random.default_rng(seed + 1)
    sources = rng.choice(n - copies, size=copies, replace=False)
    targets = np.arange(n - copies, n)
    near = vectors[sources] + 0.02 * rng.standard_normal((copies, vectors.shape[1])).astype(np.float32)
    vectors[targets] = near / np.linalg.norm(near, axis=1, keepdims=True)
    return vectors, {(min(a, b), max(a, b)) for a, b in zip(sources.tolist(), targets.tolist())}


def test_semantic_pairs_exact_and_ivf_find_the_planted_copies():
    vectors, planted = planted_vectors(3000, 30)
    exact = embedding_pairs(vectors, np.arange(3000), EmbeddingParams(threshold=0.95))
    ivf = embedding_pairs(vectors, np.arange(3000), EmbeddingParams(threshold=0.95, exact_search_below=0, nprobe=8))
    assert pairs_of(*exact[:2]) == planted
    assert pairs_of(*ivf[:2]) == planted
    assert np.allclose(exact[2], cosine(vectors, exact[0], exact[1]))


def test_representative_is_the_best_weight_then_the_lowest_sample_id():
    ids = ["d", "c", "b", "a", "e", "f"]
    left, right = np.array([0, 1, 3, 4]), np.array([1, 2, 4, 5])  # clusters {d, c, b} and {a, e, f}
    weights = np.array([1.0, 3.0, 3.0, np.nan, np.nan, 0.5])

    def similarity(a, b):
        return np.full(len(a), 0.9)

    table = clusters(ids, left, right, weights, "minhash", similarity)
    by_sample = {row["sample_id"]: row for row in table.to_pylist()}
    assert {s: r["representative_id"] for s, r in by_sample.items()} == {"b": "b", "c": "b", "d": "b", "a": "f", "e": "f", "f": "f"}
    assert by_sample["b"]["similarity"] == 1.0 and by_sample["c"]["similarity"] == 0.9
    assert len({by_sample[s]["cluster_id"] for s in "bcd"}) == 1 and by_sample["a"]["cluster_id"] != by_sample["b"]["cluster_id"]
    # same members, any order of rows: same cluster ids and rows
    again = clusters(ids[::-1], 5 - right, 5 - left, weights[::-1], "minhash", similarity)
    assert again.equals(table)


def test_refresh_pairs_queries_only_stale_shards_and_keeps_the_others(tmp_path):
    vectors, planted = planted_vectors(200, 5)
    ids = [f"s{i:03d}" for i in range(200)]

    def points_of(shards: list[tuple[str, int, int]]) -> PoolPoints:
        return PoolPoints.concat([(s, ids[a:b], vectors[a:b], np.ones(b - a, dtype=bool)) for s, a, b in shards], 64, np.float32)

    queried: list[np.ndarray] = []

    def finder(points):
        def find(rows):
            queried.append(rows)
            return embedding_pairs(points.matrix, rows, EmbeddingParams(threshold=0.95))

        return find

    old = points_of([("a", 0, 195)])
    first = refresh_pairs(tmp_path, "embedding_pairs", old, {"a": "fp-a"}, finder(old))
    assert first.queried_shards == ["a"] and pairs_of(first.left, first.right) == set()
    a_file = state_file(tmp_path, "embedding_pairs", "a")
    stamp = a_file.stat().st_mtime_ns
    grown = points_of([("a", 0, 195), ("b", 195, 200)])
    second = refresh_pairs(tmp_path, "embedding_pairs", grown, {"a": "fp-a", "b": "fp-b"}, finder(grown))
    assert second.queried_shards == ["b"] and second.reused_shards == 1
    assert queried[-1].tolist() == list(range(195, 200))  # only the new shard's rows were looked up
    assert pairs_of(second.left, second.right) == planted  # its copies of old samples
    assert a_file.stat().st_mtime_ns == stamp
    b_rows = pq.read_table(state_file(tmp_path, "embedding_pairs", "b")).to_pylist()
    assert {row["sample_id"] for row in b_rows} <= set(ids[195:])
    # a third run with nothing new queries nothing and returns the same pairs
    third = refresh_pairs(tmp_path, "embedding_pairs", grown, {"a": "fp-a", "b": "fp-b"}, finder(grown))
    assert third.queried_shards == [] and pairs_of(third.left, third.right) == planted
