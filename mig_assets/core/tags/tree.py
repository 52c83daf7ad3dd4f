"""TAGS knowledge tree (``shared/specs/tags.md`` §1.5–1.6): bottom-up clustering of tag embeddings,
naming, grounding.

Nodes are numbered leaves first: leaves (level 1, the first-level concepts of the spec's
"Option 2") are nodes ``0 .. n_leaves-1``, then level 2, and so on up to the virtual root, the last
node. Canonical tags are not nodes: each hangs below exactly one leaf (``tag2leaf``) and is the
grounding key of its samples. Every parent is exactly one level above its children.

Construction [R] (§1.5): level 1 = K-Means (seeded k-means++ on the L2-normalised tag embeddings,
so Euclidean K-Means ranks by cosine) with k = ceil(T / leaf_branching); then, while a level has
more than ``top_size`` nodes, K-Means on the node centroids with k = max(ceil(n / branching),
top_size); finally a virtual root. A node's centroid is the normalised mean of the normalised
embeddings of all tags below it. Optionally, an LLM-backed :class:`TreeRefiner` refines each level
(summarise, deduplicate, reassign among a shortlist, rename), as the paper does with Qwen3-30B.

Everything is deterministic for the same inputs and ``seed``: the K-Means is scikit-learn's (seeded,
with fixed thread limits, see :func:`kmeans`), clusters are ordered by their first member, and ties
go to the lowest index.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp
import sklearn
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from mig_assets.core.embedding.encoder import arrow_to_vectors
from mig_assets.core.validation import first_few

# part of a tree's version: another K-Means (or scikit-learn release) may cluster the same inputs otherwise
CLUSTERING_METHOD = f"scikit-learn {sklearn.__version__} KMeans (lloyd), k-means++ on a seeded subsample"

_ASSIGN_BLOCK_ELEMENTS = 1 << 23  # similarities computed per block (32 MiB of float32)
_DESCRIPTION_TERMS = 5  # child names listed in a default description
_SEED_DIMENSIONS = 64  # k-means++ seeding runs on a random projection to this many dimensions
_KMEANS_THREADS = 2  # OpenMP threads of scikit-learn's K-Means: at most 2 keeps it exact (see kmeans)
_THREADED_KMEANS_SIZE = 10_000_000  # n·k from which a second thread pays for its synchronisation


# ---------------------------------------------------------------------------------------------------------------------
# refinement hooks


@dataclass(frozen=True)
class Concept:
    """A child shown to a :class:`TreeRefiner`: a tag (level-1 parents) or a node (higher levels).

    count: tag occurrences below it (1 per tag when no counts were given).
    centrality: cosine between its embedding and the centroid of the cluster it is shown in.
    """

    name: str
    description: str
    count: float
    centrality: float


@runtime_checkable
class TreeRefiner(Protocol):
    """LLM refinement of one level of the tree (spec §1.5, Clio-style), called once per level, batched.

    ``level`` is the level of the parents being made (1 = leaves, whose children are tags). Parents
    are ``(name, description)`` pairs. All methods must be deterministic for a deterministic tree
    (temperature 0 and a prompt-keyed cache for an LLM).
    """

    def summarize(self, level: int, clusters: Sequence[Sequence[Concept]]) -> list[tuple[str, str]]:
        """One parent ``(name, description)`` per K-Means cluster of children."""
        ...

    def deduplicate(self, level: int, parents: Sequence[tuple[str, str]]) -> list[list[int]]:
        """A partition of ``range(len(parents))``: each group of synonymous parents is merged into one."""
        ...

    def reassign(
        self,
        level: int,
        children: Sequence[Concept],
        candidates: Sequence[Sequence[int]],
        parents: Sequence[tuple[str, str]],
    ) -> list[int]:
        """Each child's parent, one of its ``candidates`` (parent indices; the current parent first, then
        the most similar others by embedding cosine). Anything outside the shortlist is refused."""
        ...

    def rename(self, level: int, parents: Sequence[tuple[str, str]], children: Sequence[Sequence[Concept]]) -> list[tuple[str, str]]:
        """Final ``(name, description)`` of each parent given its final children."""
        ...


def _central_order(children: Sequence[Concept]) -> list[int]:
    """Children by decreasing centrality × (1 + ln(1 + count)), ties to the first listed."""
    scores = [c.centrality * (1.0 + math.log1p(c.count)) for c in children]
    return sorted(range(len(children)), key=lambda j: (-scores[j], j))


class CentralRefiner:
    """The deterministic no-LLM :class:`TreeRefiner`, and the naming rule :func:`build_tree` uses by default.

    A parent is named after its most central child, scored by centrality × (1 + ln(1 + count))
    (cosine to the cluster centroid, mildly favouring frequent concepts), ties to the lowest child;
    its description lists the ``n_description`` best children. Deduplicate merges nothing and
    reassign keeps the K-Means parent, so the tree is the K-Means tree. Because every child has
    one parent, names are unique within a level (a parent shares its name with one of its children).
    """

    def __init__(self, n_description: int = _DESCRIPTION_TERMS):
        self.n_description = n_description

    def _name(self, children: Sequence[Concept]) -> tuple[str, str]:
        order = _central_order(children)
        return children[order[0]].name, "; ".join(children[j].name for j in order[: self.n_description])

    def summarize(self, level: int, clusters: Sequence[Sequence[Concept]]) -> list[tuple[str, str]]:
        return [self._name(children) for children in clusters]

    def deduplicate(self, level: int, parents: Sequence[tuple[str, str]]) -> list[list[int]]:
        return [[j] for j in range(len(parents))]

    def reassign(self, level, children, candidates, parents) -> list[int]:
        return [int(shortlist[0]) for shortlist in candidates]

    def rename(self, level, parents, children) -> list[tuple[str, str]]:
        return [self._name(kids) for kids in children]


# ---------------------------------------------------------------------------------------------------------------------
# the tree


@dataclass(frozen=True, eq=False)
class KnowledgeTree:
    """A levelled tree over V nodes; arrays are indexed by node id (leaves first, root last) or by tag.

    levels: 1 for leaves, up to ``depth`` for the root; parents: −1 for the root; sizes: tags below;
    counts: tag occurrences below; centroids: (V, D) unit vectors, the normalised mean of the
    normalised embeddings of the tags below; tag2leaf: (T,) leaf of each tag in ``tag_names``.
    """

    names: list[str]
    descriptions: list[str]
    levels: np.ndarray
    parents: np.ndarray
    sizes: np.ndarray
    counts: np.ndarray
    centroids: np.ndarray
    tag_names: list[str]
    tag2leaf: np.ndarray

    @property
    def n_nodes(self) -> int:
        return len(self.names)

    @property
    def n_leaves(self) -> int:
        return int(np.count_nonzero(self.levels == 1))

    @property
    def root(self) -> int:
        return self.n_nodes - 1

    @property
    def depth(self) -> int:
        """Level of the root: 2 for a root over leaves, H + 1 for H concept levels."""
        return int(self.levels[-1])

    @property
    def node_ids(self) -> np.ndarray:
        return np.arange(self.n_nodes, dtype=np.int64)

    def children(self, node: int) -> np.ndarray:
        return np.flatnonzero(self.parents == node).astype(np.int64)

    def ancestors(self, node: int) -> np.ndarray:
        """``node`` and its ancestors up to the root, bottom-up."""
        path = [int(node)]
        while self.parents[path[-1]] >= 0:
            path.append(int(self.parents[path[-1]]))
        return np.array(path, dtype=np.int64)

    def leaf_of(self, tags: Sequence[str]) -> np.ndarray:
        """Leaf of each known tag, −1 for tags not in the tree (see :func:`ground_tags` for those)."""
        index = self._tag_index()
        return np.array([self.tag2leaf[index[t]] if t in index else -1 for t in tags], dtype=np.int64)

    def _tag_index(self) -> dict[str, int]:
        cached = self.__dict__.get("_tag_index_cache")
        if cached is None:
            cached = {t: i for i, t in enumerate(self.tag_names)}
            object.__setattr__(self, "_tag_index_cache", cached)
        return cached

    def nodes_table(self) -> dict[str, list]:
        """Columns node_id, name, description, level, parent, size, count, n_children as plain lists."""
        n_children = np.bincount(self.parents[self.parents >= 0], minlength=self.n_nodes)
        return {
            "node_id": self.node_ids.tolist(),
            "name": list(self.names),
            "description": list(self.descriptions),
            "level": self.levels.tolist(),
            "parent": self.parents.tolist(),
            "size": self.sizes.tolist(),
            "count": self.counts.tolist(),
            "n_children": n_children.tolist(),
        }

    def tags_table(self) -> dict[str, list]:
        """Columns tag, leaf (node id) as plain lists."""
        return {"tag": list(self.tag_names), "leaf": self.tag2leaf.tolist()}

    def to_dict(self) -> dict:
        """The spec's JSON form: ``nodes[{id, name, description, level, parent, children, size, count}]``
        and ``tag2leaf{tag: leaf_id}``; centroids are left out (store them as an array beside it)."""
        children = [[] for _ in range(self.n_nodes)]
        for node, parent in enumerate(self.parents.tolist()):
            if parent >= 0:
                children[parent].append(node)
        nodes = [
            {
                "id": v,
                "name": self.names[v],
                "description": self.descriptions[v],
                "level": int(self.levels[v]),
                "parent": int(self.parents[v]),
                "children": children[v],
                "size": int(self.sizes[v]),
                "count": float(self.counts[v]),
            }
            for v in range(self.n_nodes)
        ]
        return {"nodes": nodes, "tag2leaf": dict(zip(self.tag_names, self.tag2leaf.tolist()))}

    @classmethod
    def from_dict(cls, data: dict, centroids) -> KnowledgeTree:
        """Inverse of :meth:`to_dict`, with the (V, D) centroids stored beside it."""
        nodes = sorted(data["nodes"], key=lambda node: node["id"])
        if [node["id"] for node in nodes] != list(range(len(nodes))):
            raise ValueError("node ids must be 0 .. V-1")
        tree = cls(
            names=[node["name"] for node in nodes],
            descriptions=[node.get("description", "") for node in nodes],
            levels=np.array([node["level"] for node in nodes], dtype=np.int64),
            parents=np.array([node["parent"] for node in nodes], dtype=np.int64),
            sizes=np.array([node.get("size", 0) for node in nodes], dtype=np.int64),
            counts=np.array([node.get("count", 0) for node in nodes], dtype=np.float64),
            centroids=np.asarray(centroids, dtype=np.float32),
            tag_names=list(data["tag2leaf"]),
            tag2leaf=np.array(list(data["tag2leaf"].values()), dtype=np.int64),
        )
        validate_tree(tree)
        return tree


def validate_tree(tree: KnowledgeTree) -> None:
    """Check the layout invariants: leaves first, root last, parents exactly one level up, tags on leaves."""
    V = tree.n_nodes
    if V < 2:
        raise ValueError("a tree has at least one leaf and a root")
    for name, array in (
        ("levels", tree.levels),
        ("parents", tree.parents),
        ("sizes", tree.sizes),
        ("counts", tree.counts),
        ("descriptions", tree.descriptions),
    ):
        if len(array) != V:
            raise ValueError(f"{name} has {len(array)} entries for {V} nodes")
    if len(tree.centroids) != V:
        raise ValueError(f"centroids has {len(tree.centroids)} rows for {V} nodes")
    levels, parents = tree.levels, tree.parents
    if (np.diff(levels) < 0).any() or levels[0] != 1:
        raise ValueError("nodes must be numbered by level, leaves (level 1) first")
    if parents[-1] != -1 or (parents[:-1] < 0).any() or (parents[:-1] >= V).any():
        raise ValueError("the last node must be the root (parent −1) and every other node must have a parent")
    if (levels[parents[:-1]] != levels[:-1] + 1).any():
        raise ValueError("every parent must be exactly one level above its children")
    has_children = np.zeros(V, dtype=bool)
    has_children[parents[:-1]] = True
    if (has_children != (levels > 1)).any():
        raise ValueError("exactly the nodes above level 1 must have children")
    n_leaves = int(np.count_nonzero(levels == 1))
    if len(tree.tag2leaf) != len(tree.tag_names) or len(set(tree.tag_names)) != len(tree.tag_names):
        raise ValueError("tag_names must be unique and match tag2leaf")
    if len(tree.tag2leaf) and not (0 <= tree.tag2leaf.min() and tree.tag2leaf.max() < n_leaves):
        raise ValueError("every tag must map to a leaf")


# ---------------------------------------------------------------------------------------------------------------------
# K-Means (numpy, deterministic)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def _nearest_by_cosine(points: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the centre with the largest x·c (ties to the lowest) and that cosine; computed in row blocks."""
    labels = np.empty(len(points), dtype=np.int64)
    scores = np.empty(len(points), dtype=points.dtype)
    block = max(1, _ASSIGN_BLOCK_ELEMENTS // max(len(centres), 1))
    for start in range(0, len(points), block):
        similarity = points[start : start + block] @ centres.T
        labels[start : start + block] = similarity.argmax(axis=1)
        scores[start : start + block] = similarity[np.arange(len(similarity)), labels[start : start + block]]
    return labels, scores


def _cluster_sums(points: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    one_hot = sp.csr_array((np.ones(len(labels), dtype=points.dtype), (labels, np.arange(len(labels)))), shape=(k, len(labels)))
    return np.asarray(one_hot @ points)


class _SubsampledKMeansPlusPlus:
    """scikit-learn's greedy k-means++ (``kmeans_plusplus``) on a seeded subsample of ``init_size`` rows, an
    ``init`` callable for :class:`~sklearn.cluster.KMeans`.

    Above 64 dimensions the seeding runs on a seeded Gaussian random projection to 64 dimensions, which
    preserves distances well enough for seeding and makes it 6× cheaper at 384 dimensions; Lloyd's
    iterations use the full vectors. KMeans passes the points centred on their mean (distances are
    unchanged).
    """

    def __init__(self, init_size: int | None):
        self.init_size = init_size

    def __call__(self, points: np.ndarray, k: int, random_state: np.random.RandomState) -> np.ndarray:
        n, dimensions = points.shape
        size = min(n, self.init_size or max(3 * k, 10_000))
        sample = np.sort(random_state.choice(n, size=size, replace=False)) if size < n else np.arange(n)
        candidates = points[sample]
        if dimensions > _SEED_DIMENSIONS:
            projection = random_state.standard_normal((dimensions, _SEED_DIMENSIONS)).astype(points.dtype)
            candidates = candidates @ projection
        # in float64: for float32 rows scikit-learn computes each distance block in a float64 copy, 2× slower
        _, seeds = kmeans_plusplus(candidates.astype(np.float64), k, random_state=random_state)
        return points[sample[seeds]]


def kmeans(
    points: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    max_iter: int = 20,
    tol: float = 1e-3,
    init_size: int | None = None,
    n_init: int | str = "auto",
) -> np.ndarray:
    """Labels (n,) of scikit-learn's Lloyd K-Means (min Σ‖x − c‖²) on unit-vector rows, seeded by greedy
    k-means++ on a seeded subsample.

    init_size: rows the seeding samples from (default min(n, max(3k, 10,000))).
    n_init: restarts, keeping the lowest inertia; "auto" = min(10, max(1, 3·10⁷ // (n·k))), i.e. 10 on
        small problems, where one unlucky seeding splits a tight cluster, and 1 at scale (50,000 tags
        into 5,000 leaves).
    max_iter, tol: each run stops after ``max_iter`` iterations, when no label changes, or when the
        total squared centre shift Σ‖Δc‖² is at most ``tol`` × the mean per-feature variance of the
        points (scikit-learn's rule).
    Empty clusters are re-seeded with far points (scikit-learn's rule). Clusters are numbered by their
    first member and clusters that stay empty (fewer distinct points than k) are dropped, so labels
    are 0 .. k'−1 with k' ≤ k. Deterministic for the same inputs and seed whatever the thread settings,
    on any machine with two cores or more: BLAS runs on one thread and scikit-learn's OpenMP loops on at
    most two (see below).
    """
    n = len(points)
    k = max(1, min(int(k), n))
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    if n_init == "auto":
        n_init = min(10, max(1, 30_000_000 // (n * k)))
    model = KMeans(
        n_clusters=k,
        init=_SubsampledKMeansPlusPlus(init_size),
        n_init=max(1, int(n_init)),
        max_iter=max(1, max_iter),
        tol=tol,
        random_state=seed,
        algorithm="lloyd",
    )
    # scikit-learn adds each thread's partial centre sums under a lock, in the order the threads finish:
    # with two threads that is one commutative addition, exact; with more, the rounding could vary.
    # Small problems run on one thread: there, waiting for the other thread costs more than it saves.
    # BLAS single-threaded: the seeding is k small products in a row, where thread hand-offs cost more
    # than they save (and scikit-learn's Lloyd iterations run BLAS single-threaded anyway).
    threads = {"openmp": _KMEANS_THREADS if n * k >= _THREADED_KMEANS_SIZE else 1, "blas": 1}
    with threadpool_limits(limits=threads), warnings.catch_warnings():
        # fewer distinct points than k: the surplus clusters are dropped below
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = model.fit(np.ascontiguousarray(points)).labels_
    return _canonical_labels(labels.astype(np.int64))


def _canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters 0 .. k'−1 by their first member, dropping empty ones."""
    used, first = np.unique(labels, return_index=True)
    rank = np.empty(len(used), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(used))
    lookup = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
    lookup[used] = rank
    return lookup[labels]


# ---------------------------------------------------------------------------------------------------------------------
# building


@dataclass
class _Level:
    """The nodes of one level during construction (node j ↔ row j)."""

    sums: np.ndarray  # (n, D) sums of the normalised embeddings of the tags below
    counts: np.ndarray  # (n,) tag occurrences below
    sizes: np.ndarray  # (n,) tags below
    names: list[str]
    descriptions: list[str]
    parent_of_children: np.ndarray  # (n_children,) parent of each node of the level below (or each tag for leaves)

    @property
    def centroids(self) -> np.ndarray:
        return _normalise(self.sums)


def _check_inputs(tag_names, embeddings, counts) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    names = [str(name) for name in tag_names]
    if not names:
        raise ValueError("cannot build a tree from zero tags")
    duplicates = sorted(name for name, n in Counter(names).items() if n > 1)
    if duplicates:
        raise ValueError(f"tag names must be unique (canonical tags); repeated: {first_few(duplicates)}")
    vectors = np.asarray(embeddings, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(names):
        raise ValueError(f"embeddings must have shape ({len(names)}, D), got {vectors.shape}")
    unusable = np.flatnonzero(~np.isfinite(vectors).all(axis=1) | ~vectors.any(axis=1))
    if len(unusable):
        raise ValueError(f"embedding rows must be finite and non-zero; offending rows {first_few(unusable.tolist())}")
    if counts is not None:
        counts = np.asarray(counts, dtype=np.float64)
        if counts.shape != (len(names),):
            raise ValueError(f"expected {len(names)} counts, got shape {counts.shape}")
        bad = np.flatnonzero(~(np.isfinite(counts) & (counts >= 0)))
        if len(bad):
            raise ValueError(f"counts must be finite and >= 0; offending tags {first_few([names[i] for i in bad])}")
    return names, _normalise(vectors), counts


def _members(labels: np.ndarray, n_clusters: int) -> list[np.ndarray]:
    order = np.argsort(labels, kind="stable")
    return np.split(order, np.cumsum(np.bincount(labels, minlength=n_clusters))[:-1])


def _concepts(names, descriptions, counts, centralities, rows) -> list[Concept]:
    return [Concept(names[r], descriptions[r], float(counts[r]), float(centralities[r])) for r in rows]


def _centrality(vectors: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", vectors, centroids[labels]).astype(np.float64)


def _check_pairs(result, expected: int, what: str) -> list[tuple[str, str]]:
    pairs = [(str(name), str(description)) for name, description in result]
    if len(pairs) != expected:
        raise ValueError(f"refiner.{what} returned {len(pairs)} parents for {expected}")
    return pairs


def _shortlists(vectors: np.ndarray, labels: np.ndarray, centroids: np.ndarray, m: int) -> list[list[int]]:
    """Per child: its current parent, then the most similar other parents by cosine (ties to the lowest), m in all."""
    m = max(1, min(m, len(centroids)))
    result = []
    block = max(1, _ASSIGN_BLOCK_ELEMENTS // max(len(centroids), 1))
    for start in range(0, len(vectors), block):
        similarity = vectors[start : start + block] @ centroids.T
        rows = np.arange(len(similarity))
        similarity[rows, labels[start : start + block]] = np.inf
        if m < len(centroids):
            top = np.argpartition(-similarity, m - 1, axis=1)[:, :m]
        else:
            top = np.broadcast_to(np.arange(len(centroids)), similarity.shape)
        top_similarity = similarity[rows[:, None], top]
        # sort the m by decreasing similarity, then by index (the current parent, at +inf, comes first)
        order = np.lexsort((top, -top_similarity), axis=1)
        result.extend(np.take_along_axis(top, order, axis=1).tolist())
    return result


def _refine_level(
    level: int,
    refiner: TreeRefiner,
    vectors: np.ndarray,
    names: list[str],
    descriptions: list[str],
    counts: np.ndarray,
    labels: np.ndarray,
    shortlist: int,
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Summarize → deduplicate → reassign (shortlist) → drop empty → rename; returns labels and parents."""
    n_parents = int(labels.max()) + 1
    centroids = _normalise(_cluster_sums(vectors, labels, n_parents))
    centrality = _centrality(vectors, labels, centroids)
    clusters = [_concepts(names, descriptions, counts, centrality, rows) for rows in _members(labels, n_parents)]
    parents = _check_pairs(refiner.summarize(level, clusters), n_parents, "summarize")

    groups = [sorted(int(j) for j in group) for group in refiner.deduplicate(level, parents)]
    flat = sorted(j for group in groups for j in group)
    if flat != list(range(n_parents)) or any(not group for group in groups):
        raise ValueError(f"refiner.deduplicate must return a partition of range({n_parents}) into non-empty groups")
    groups.sort(key=lambda group: group[0])
    merged = np.empty(n_parents, dtype=np.int64)
    for new, group in enumerate(groups):
        merged[group] = new
    parents = [parents[group[0]] for group in groups]
    labels = merged[labels]

    centroids = _normalise(_cluster_sums(vectors, labels, len(parents)))
    candidates = _shortlists(vectors, labels, centroids, shortlist)
    centrality = _centrality(vectors, labels, centroids)
    children = _concepts(names, descriptions, counts, centrality, range(len(names)))
    choice = [int(c) for c in refiner.reassign(level, children, candidates, parents)]
    if len(choice) != len(names):
        raise ValueError(f"refiner.reassign returned {len(choice)} parents for {len(names)} children")
    outside = [j for j, (c, allowed) in enumerate(zip(choice, candidates)) if c not in allowed]
    if outside:
        raise ValueError(f"refiner.reassign chose parents outside the shortlist for children {first_few(outside)}")
    labels = np.array(choice, dtype=np.int64)

    kept = _canonical_labels(labels)  # drops parents left empty, renumbers by first child
    first_old = np.full(int(kept.max()) + 1, -1, dtype=np.int64)
    first_old[kept[::-1]] = labels[::-1]
    parents = [parents[old] for old in first_old.tolist()]
    labels = kept
    centroids = _normalise(_cluster_sums(vectors, labels, len(parents)))
    centrality = _centrality(vectors, labels, centroids)
    final_children = [_concepts(names, descriptions, counts, centrality, rows) for rows in _members(labels, len(parents))]
    return labels, _check_pairs(refiner.rename(level, parents, final_children), len(parents), "rename")


def _name_level(vectors, names, descriptions, counts, labels) -> list[tuple[str, str]]:
    n_parents = int(labels.max()) + 1
    centroids = _normalise(_cluster_sums(vectors, labels, n_parents))
    centrality = _centrality(vectors, labels, centroids)
    clusters = [_concepts(names, descriptions, counts, centrality, rows) for rows in _members(labels, n_parents)]
    return CentralRefiner().summarize(0, clusters)


def _make_level(vectors, names, descriptions, counts, sizes, labels, level, refine, shortlist) -> _Level:
    if refine is not None:
        labels, parents = _refine_level(level, refine, vectors, names, descriptions, counts, labels, shortlist)
    else:
        parents = _name_level(vectors, names, descriptions, counts, labels)
    n_parents = len(parents)
    return _Level(
        sums=np.zeros((n_parents, vectors.shape[1]), dtype=np.float32),  # filled by the caller
        counts=np.bincount(labels, weights=counts, minlength=n_parents),
        sizes=np.bincount(labels, weights=sizes, minlength=n_parents).astype(np.int64),
        names=[name for name, _ in parents],
        descriptions=[description for _, description in parents],
        parent_of_children=labels,
    )


def build_tree(
    tag_names: Sequence[str],
    embeddings,
    counts=None,
    *,
    branching: float = 10,
    top_size: int = 20,
    leaf_branching: float | None = None,
    min_count: float = 2,
    seed: int = 0,
    max_iter: int = 20,
    tol: float = 1e-3,
    refine: TreeRefiner | None = None,
    shortlist: int = 5,
) -> KnowledgeTree:
    """Bottom-up knowledge tree over canonical tags (spec §1.5, leaves = level-1 concepts).

    tag_names: T unique canonical tags; embeddings: (T, D), normalised here; counts: (T,) tag
    occurrences in the pool, or None (every tag counts 1).
    leaf_branching: mean tags per leaf, k₁ = ceil(T' / leaf_branching) (default ``branching``), where
        T' counts the tags clustered: with counts given, tags with count < ``min_count`` (rare tags,
        spec §1.3.6) never seed clusters and are attached afterwards to the nearest leaf centroid,
        unless no tag reaches min_count.
    branching, top_size: a level with n > top_size nodes gets a parent level of
        k = max(ceil(n / branching), top_size) nodes (so the top level has exactly top_size nodes,
        unless the leaves are already at most top_size); a virtual root goes over the top level.
    seed, max_iter, tol: the K-Means of every level (see :func:`kmeans`; level ℓ uses seed + ℓ − 1).
    refine: a :class:`TreeRefiner` (e.g. LLM-backed) run on every level, with ``shortlist``
        candidate parents per child for reassignment; None names nodes with :class:`CentralRefiner`'s
        rule and keeps the K-Means clusters.
    """
    names, vectors, tag_counts = _check_inputs(tag_names, embeddings, counts)
    if not branching >= 2:
        raise ValueError(f"branching must be >= 2, got {branching}")
    if int(top_size) < 1:
        raise ValueError(f"top_size must be >= 1, got {top_size}")
    leaf_branching = branching if leaf_branching is None else leaf_branching
    if not leaf_branching >= 1:
        raise ValueError(f"leaf_branching must be >= 1, got {leaf_branching}")
    if int(shortlist) < 1:
        raise ValueError(f"shortlist must be >= 1, got {shortlist}")
    T = len(names)
    occurrences = np.ones(T) if tag_counts is None else tag_counts
    core = np.ones(T, dtype=bool) if tag_counts is None else tag_counts >= min_count
    if not core.any():
        core[:] = True
    core_rows = np.flatnonzero(core)

    # level 1: leaves over the core tags; rare tags go to the nearest leaf afterwards
    k1 = math.ceil(len(core_rows) / leaf_branching)
    core_labels = kmeans(vectors[core_rows], k1, seed=seed, max_iter=max_iter, tol=tol)
    core_names = [names[r] for r in core_rows]
    leaves = _make_level(
        vectors[core_rows],
        core_names,
        [""] * len(core_rows),
        occurrences[core_rows],
        np.ones(len(core_rows), dtype=np.int64),
        core_labels,
        1,
        refine,
        shortlist,
    )
    tag2leaf = np.empty(T, dtype=np.int64)
    tag2leaf[core_rows] = leaves.parent_of_children
    rare = np.flatnonzero(~core)
    if len(rare):
        core_centroids = _normalise(_cluster_sums(vectors[core_rows], leaves.parent_of_children, len(leaves.names)))
        tag2leaf[rare] = _nearest_by_cosine(vectors[rare], core_centroids)[0]
    n_leaves = len(leaves.names)
    leaves.parent_of_children = tag2leaf
    leaves.sums = _cluster_sums(vectors, tag2leaf, n_leaves)
    leaves.counts = np.bincount(tag2leaf, weights=occurrences, minlength=n_leaves)
    leaves.sizes = np.bincount(tag2leaf, minlength=n_leaves).astype(np.int64)
    if refine is None:  # rename leaves now that the rare tags are attached
        named = _name_level(vectors, names, [""] * T, occurrences, tag2leaf)
        leaves.names = [name for name, _ in named]
        leaves.descriptions = [description for _, description in named]

    levels = [leaves]
    while len(levels[-1].names) > top_size:
        below = levels[-1]
        n = len(below.names)
        k = max(math.ceil(n / branching), int(top_size))
        centroids = below.centroids
        labels = kmeans(centroids, k, seed=seed + len(levels), max_iter=max_iter, tol=tol)
        parent = _make_level(centroids, below.names, below.descriptions, below.counts, below.sizes, labels, len(levels) + 1, refine, shortlist)
        parent.sums = _cluster_sums(below.sums, parent.parent_of_children, len(parent.names))
        levels.append(parent)
    return _assemble(levels, names, tag2leaf)


def _assemble(levels: list[_Level], tag_names: list[str], tag2leaf: np.ndarray) -> KnowledgeTree:
    offsets = np.cumsum([0] + [len(level.names) for level in levels])
    root = int(offsets[-1])
    top = levels[-1]
    parents = [level_above.parent_of_children + offsets[depth + 1] for depth, level_above in enumerate(levels[1:])]
    parents.append(np.full(len(top.names), root, dtype=np.int64))
    root_sum = top.sums.sum(axis=0, keepdims=True)
    root_name = "root"
    tree = KnowledgeTree(
        names=[name for level in levels for name in level.names] + [root_name],
        descriptions=[d for level in levels for d in level.descriptions] + ["virtual root"],
        levels=np.concatenate([np.full(len(level.names), depth + 1, dtype=np.int64) for depth, level in enumerate(levels)] + [[len(levels) + 1]]).astype(
            np.int64
        ),
        parents=np.concatenate(parents + [[-1]]).astype(np.int64),
        sizes=np.concatenate([level.sizes for level in levels] + [[len(tag_names)]]).astype(np.int64),
        counts=np.concatenate([level.counts for level in levels] + [[top.counts.sum()]]).astype(np.float64),
        centroids=_normalise(np.concatenate([level.sums for level in levels] + [root_sum]).astype(np.float32)),
        tag_names=list(tag_names),
        tag2leaf=tag2leaf.astype(np.int64),
    )
    validate_tree(tree)
    return tree


# ---------------------------------------------------------------------------------------------------------------------
# grounding


class Grounding(NamedTuple):
    """Result of :func:`ground_tags`; arrays are indexed like the input tags.

    leaf_ids: leaf node id, −1 when unassigned; similarities: cosine to that leaf's centroid (to the
    nearest leaf for unassigned tags; NaN for known tags given no embedding); counts: how many tags
    were ``known`` (in tag2leaf), ``nearest`` (unseen, cos ≥ threshold) and ``unassigned``.
    """

    leaf_ids: np.ndarray
    similarities: np.ndarray
    counts: dict[str, int]


def ground_tags(tree: KnowledgeTree, new_names: Sequence[str], new_embeddings=None, threshold: float = 0.65) -> Grounding:
    """Leaf of each tag (spec §1.6): known tags via tag2leaf; unseen tags to the leaf whose centroid has the
    largest cosine with their embedding (ties to the lowest leaf) if it is ≥ ``threshold``, else −1.

    ``new_embeddings`` (n, D) is needed for the unseen tags (rows of known tags may be anything
    finite); with None every tag must be known.
    """
    names = [str(name) for name in new_names]
    leaf_ids = tree.leaf_of(names)
    known = leaf_ids >= 0
    similarities = np.full(len(names), np.nan)
    if new_embeddings is None:
        if not known.all():
            unknown = [names[i] for i in np.flatnonzero(~known)]
            raise ValueError(f"{len(unknown)} tag(s) are not in the tree and no embeddings were given: {first_few(unknown)}")
    else:
        vectors = np.asarray(new_embeddings, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(names) or vectors.shape[1] != tree.centroids.shape[1]:
            raise ValueError(f"new_embeddings must have shape ({len(names)}, {tree.centroids.shape[1]}), got {vectors.shape}")
        vectors = _normalise(vectors)
        leaf_centroids = tree.centroids[: tree.n_leaves]
        unseen = np.flatnonzero(~known)
        if len(unseen):
            bad = unseen[~np.isfinite(vectors[unseen]).all(axis=1) | ~vectors[unseen].any(axis=1)]
            if len(bad):
                offending = first_few([names[i] for i in bad])
                raise ValueError(f"embeddings of unseen tags must be finite and non-zero; offending {offending}")
            nearest, cosine = _nearest_by_cosine(vectors[unseen], leaf_centroids)
            cosine = cosine.astype(np.float64)
            similarities[unseen] = cosine
            leaf_ids[unseen] = np.where(cosine >= threshold, nearest, -1)
        known_rows = np.flatnonzero(known)
        finite = np.isfinite(vectors[known_rows]).all(axis=1)
        similarities[known_rows[finite]] = np.einsum("ij,ij->i", vectors[known_rows[finite]], leaf_centroids[leaf_ids[known_rows[finite]]])
    counts = {"known": int(known.sum()), "nearest": int(((leaf_ids >= 0) & ~known).sum()), "unassigned": int((leaf_ids < 0).sum())}
    return Grounding(leaf_ids, similarities, counts)


def load_tree(folder: Path) -> tuple[KnowledgeTree, dict]:
    """The knowledge tree stored in ``folder`` (tree.json + centroids.parquet), its version and embedding model."""
    if not (folder / "tree.json").exists():
        raise ValueError("TAGS needs the knowledge tree: materialize knowledge_tree first")
    data = json.loads((folder / "tree.json").read_text())
    centroids = arrow_to_vectors(pq.read_table(folder / "centroids.parquet").column("centroid"))
    info = {"version": data.get("version", ""), "embedding_model": data.get("embedding_model", "")}
    return KnowledgeTree.from_dict(data, centroids), info
