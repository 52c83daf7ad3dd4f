"""Near-duplicate samples: lexical near copies (MinHash LSH over word shingles) and semantic ones
(cosine of the sample embeddings), grouped into clusters that keep one representative.

The math, per method:

- lexical: a text's shingles S are its word n-grams after NFKC + casefold; J(A, B) = |A ∩ B| / |A ∪ B|.
  A MinHash signature holds, per permutation h, min over S of h(s), and P[min_h A = min_h B] = J(A, B),
  so the fraction of equal entries over ``num_perm`` estimates J. LSH splits the signature into b
  bands of r rows: a pair is a candidate with probability 1 - (1 - J^r)^b; candidates are kept when
  their estimated J >= threshold.
- semantic: for unit vectors cos(u, v) = u . v; pairs with cos >= threshold, found with faiss
  (exact inner products up to ``exact_search_below`` vectors, an IVF index above).

Pairs are edges; the clusters are the connected components of each method's graph. The
representative of a cluster is its member with the highest quality weight (a missing weight ranks
last), then the lowest sample_id. Every other member's ``similarity`` is to the representative.

Libraries (chosen by measurement, docs/architecture.md "Near-duplicates"): rensa computes the
signatures (Rust; 2.4x datasketch's ``MinHash.bulk`` shingling included), datasketch's ``MinHashLSH`` is the band index
(it is rebuilt from stored signatures; rensa's index only takes its own token-hashed sketches),
faiss-cpu the vector index.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

NORMALIZATION = "nfkc-casefold-words-v1"  # part of the signature fingerprint: a change re-signs every shard
WORD = re.compile(r"\w+")
NEAR_DUPLICATES_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("cluster_id", pa.string()),
        ("representative_id", pa.string()),
        ("method", pa.string()),
        ("similarity", pa.float64()),
    ]
)
QUERY_BATCH = 65_536  # vectors per faiss range search: bounds the result buffers


@dataclass(frozen=True)
class MinHashParams:
    num_perm: int = 128
    threshold: float = 0.8
    shingle_size: int = 3
    false_negative_weight: float = 0.95
    seed: int = 42

    def signature_fingerprint(self) -> str:
        """What a stored signature depends on: the shingling, the permutations and rensa's algorithm."""
        import rensa

        return f"{NORMALIZATION}|shingle={self.shingle_size}|perm={self.num_perm}|seed={self.seed}|rensa-alg={rensa.RMinHash.ALGORITHM_VERSION}"

    def pair_fingerprint(self) -> str:
        return f"{self.signature_fingerprint()}|t={self.threshold}|fnw={self.false_negative_weight}"


@dataclass(frozen=True)
class EmbeddingParams:
    threshold: float = 0.95
    exact_search_below: int = 50_000
    nprobe: int = 8
    seed: int = 42

    def pair_fingerprint(self) -> str:
        return f"cos={self.threshold}|exact<={self.exact_search_below}|nprobe={self.nprobe}|seed={self.seed}"


def shingles(text: str, size: int) -> list[str]:
    """The distinct word ``size``-grams of the normalized text, in first-seen order; a text of at
    most ``size`` words is one shingle; a text without words has none."""
    words = WORD.findall(unicodedata.normalize("NFKC", text).casefold())
    if len(words) <= size:
        return [" ".join(words)] if words else []
    return list(dict.fromkeys(" ".join(words[i : i + size]) for i in range(len(words) - size + 1)))


def minhash_signatures(texts: list[str], params: MinHashParams) -> tuple[np.ndarray, np.ndarray]:
    """``(signatures, has_words)``: a (n, num_perm) uint32 matrix (rensa's RMinHash) and which texts
    have any word (a text without words is never a near copy: its row is zeros)."""
    import rensa

    sets = [shingles(text, params.shingle_size) for text in texts]
    has_words = np.array([bool(s) for s in sets], dtype=bool)
    signatures = np.zeros((len(texts), params.num_perm), dtype=np.uint32)
    if has_words.any():
        matrix = rensa.RMinHash.digest_matrix_from_token_sets([s for s in sets if s], params.num_perm, params.seed)
        signatures[has_words] = np.asarray(matrix.to_rows(), dtype=np.uint32)
    return signatures, has_words


def estimated_jaccard(signatures: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Fraction of equal signature entries of each pair (left[k], right[k])."""
    if len(left) == 0:
        return np.zeros(0)
    return (signatures[left] == signatures[right]).mean(axis=1)


def minhash_pairs(signatures: np.ndarray, has_words: np.ndarray, queries: np.ndarray, params: MinHashParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, with estimated Jaccard >= threshold, where i or j is a row of ``queries``:
    the LSH index holds every row with words, and only the query rows are looked up in it."""
    from datasketch import LeanMinHash, MinHashLSH

    lsh = MinHashLSH(threshold=params.threshold, num_perm=params.num_perm, weights=(1 - params.false_negative_weight, params.false_negative_weight))
    values = signatures.astype(np.uint64)

    def sketch(row: int) -> LeanMinHash:
        # datasketch uses the scheme only to refuse mixing kinds of sketches; these are all rensa's
        return LeanMinHash(seed=params.seed, hashvalues=values[row], scheme="legacy")

    rows = np.flatnonzero(has_words)
    with lsh.insertion_session() as session:
        for row in rows.tolist():
            session.insert(row, sketch(row), check_duplication=False)
    left, right = [], []
    for row in queries[has_words[queries]].tolist():
        for other in lsh.query(sketch(row)):
            if other != row:
                left.append(min(row, other))
                right.append(max(row, other))
    return _verified(np.array(left, dtype=np.int64), np.array(right, dtype=np.int64), lambda a, b: estimated_jaccard(signatures, a, b), params.threshold)


def cosine(vectors: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """u . v of each pair (unit vectors: their cosine), in float64 so the value does not depend on the index."""
    if len(left) == 0:
        return np.zeros(0)
    return np.einsum("ij,ij->i", vectors[left].astype(np.float64), vectors[right].astype(np.float64))


def ivf_cells(n: int, nprobe: int) -> int:
    """sqrt(nprobe n) cells: the assignment (n x cells) and the scan (n x nprobe x n / cells) cost the same."""
    return max(1, int(np.sqrt(nprobe * n)))


def vector_index(vectors: np.ndarray, params: EmbeddingParams):
    """``(index, probes)``: a faiss inner-product index over ``vectors`` (float32, unit rows) and each
    row's ``nprobe`` nearest cells. Flat (exact; probes None) up to ``exact_search_below`` rows; else
    IVF-Flat with :func:`ivf_cells` cells, k-means (5 iterations) on a seeded sample of 16 vectors a
    cell. Each row's cells are found once, for adding it (its nearest) and for querying it (all)."""
    import faiss
    from faiss.contrib.ivf_tools import add_preassigned

    n, dimension = vectors.shape
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if n <= params.exact_search_below:
        flat = faiss.IndexFlatIP(dimension)
        flat.add(vectors)
        return flat, None
    cells = ivf_cells(n, params.nprobe)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dimension), dimension, cells, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed, index.cp.niter, index.cp.min_points_per_centroid = params.seed, 5, 16
    sample = np.sort(np.random.default_rng(params.seed).choice(n, size=min(n, 16 * cells), replace=False))
    index.train(np.ascontiguousarray(vectors[sample]))
    index.nprobe = min(params.nprobe, cells)
    _, probes = index.quantizer.search(vectors, index.nprobe)
    add_preassigned(index, vectors, np.ascontiguousarray(probes[:, 0]))
    return index, probes


def range_query(index, vectors: np.ndarray, threshold: float, probes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every (query row, indexed row) with inner product >= threshold, by batches of queries;
    ``probes``: the queries' cells of an IVF index, when known."""
    from faiss.contrib.ivf_tools import range_search_preassigned

    queries, neighbours = [], []
    for start in range(0, len(vectors), QUERY_BATCH):
        batch = np.ascontiguousarray(vectors[start : start + QUERY_BATCH], dtype=np.float32)
        if probes is None:
            limits, _, found = index.range_search(batch, threshold)
        else:
            limits, _, found = range_search_preassigned(index, batch, threshold, np.ascontiguousarray(probes[start : start + QUERY_BATCH]))
        queries.append(start + np.repeat(np.arange(len(limits) - 1), np.diff(limits).astype(np.int64)))
        neighbours.append(found)
    if not queries:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(queries).astype(np.int64), np.concatenate(neighbours).astype(np.int64)


def embedding_pairs(vectors: np.ndarray, queries: np.ndarray, params: EmbeddingParams, search=range_query) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, with cos >= threshold, where i or j is a row of ``queries``. The index
    (:func:`vector_index`) holds every row; ``search(index, query_vectors, threshold, probes)`` looks
    the queries up (:func:`range_query` here, or on a cluster's actors)."""
    if len(queries) == 0 or len(vectors) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
    index, probes = vector_index(vectors, params)
    rows, found = search(index, vectors[queries], params.threshold, None if probes is None else probes[queries])
    rows = queries[rows]
    keep = found != rows
    left, right = np.minimum(rows[keep], found[keep]), np.maximum(rows[keep], found[keep])
    return _verified(left, right, lambda a, b: cosine(vectors, a, b), params.threshold)


def _verified(left, right, similarity, threshold: float):
    """Distinct pairs, sorted, with their similarity, those at or above ``threshold``."""
    if len(left) == 0:
        return left, right, np.zeros(0)
    pairs = np.unique(np.stack([left, right], axis=1), axis=0)
    values = similarity(pairs[:, 0], pairs[:, 1])
    keep = values >= threshold
    return pairs[keep, 0], pairs[keep, 1], values[keep]


def clusters(sample_ids: list[str], left: np.ndarray, right: np.ndarray, weights: np.ndarray, method: str, similarity) -> pa.Table:
    """One row per member of each connected component of size >= 2 of the graph (rows = samples,
    edges = pairs), in :data:`NEAR_DUPLICATES_SCHEMA`, sorted by cluster_id then sample_id.

    ``weights`` holds each row's quality weight (NaN: none, ranked last); ``similarity(a, b)`` the
    method's similarity of row pairs, used for each member against its representative. The
    cluster_id is a hash of the method and the sorted member ids: stable while the members are.
    """
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components

    if len(left) == 0:
        return NEAR_DUPLICATES_SCHEMA.empty_table()
    nodes = np.unique(np.concatenate([left, right]))
    local = {row: k for k, row in enumerate(nodes.tolist())}
    a = np.array([local[row] for row in left.tolist()])
    b = np.array([local[row] for row in right.tolist()])
    graph = coo_array((np.ones(len(a)), (a, b)), shape=(len(nodes), len(nodes)))
    _, labels = connected_components(graph, directed=False)
    ids = np.array(sample_ids, dtype=object)
    rank_weight = np.where(np.isnan(weights[nodes]), -np.inf, weights[nodes])
    out: dict[str, list] = {name: [] for name in NEAR_DUPLICATES_SCHEMA.names}
    by_component = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(labels[by_component]) != 0])
    for positions in np.split(by_component, starts[1:]):
        members, member_weights = nodes[positions], rank_weight[positions]
        # best weight first, then the lowest sample_id
        representative = members[min(range(len(members)), key=lambda k: (-member_weights[k], ids[members[k]]))]
        member_ids = sorted(ids[members].tolist())
        cluster_id = hashlib.sha256("\n".join([method, *member_ids]).encode()).hexdigest()[:16]
        values = similarity(members, np.full(len(members), representative))
        for row, value in zip(members.tolist(), values.tolist()):
            out["sample_id"].append(ids[row])
            out["cluster_id"].append(cluster_id)
            out["representative_id"].append(ids[representative])
            out["method"].append(method)
            out["similarity"].append(1.0 if row == representative else round(float(value), 6))
    table = pa.table(out, schema=NEAR_DUPLICATES_SCHEMA)
    return table.sort_by([("cluster_id", "ascending"), ("sample_id", "ascending")])
