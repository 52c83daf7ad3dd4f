"""Building the knowledge tree bottom-up (``shared/specs/tags.md`` §1.5).

Construction [R]: level 1 = K-Means (seeded k-means++ on the L2-normalised tag embeddings, so
Euclidean K-Means ranks by cosine) with k = ceil(T / leaf_branching); then, while a level has
more than ``top_size`` nodes, K-Means on the node centroids with k = max(ceil(n / branching),
top_size); finally a virtual root. A node's centroid is the normalised mean of the normalised
embeddings of all tags below it. Optionally, an LLM-backed :class:`~mig_assets.core.tags.naming.TreeRefiner`
refines each level (summarise, deduplicate, reassign among a shortlist, rename), as the paper does
with Qwen3-30B.

Everything is deterministic for the same inputs and ``seed``: the K-Means is scikit-learn's (seeded,
with fixed thread limits, see :func:`~mig_assets.core.tags.clustering.kmeans`), clusters are ordered
by their first member, and ties go to the lowest index.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mig_assets.core.tags.clustering import cluster_sums, kmeans
from mig_assets.core.tags.naming import TreeRefiner, name_level, refine_level
from mig_assets.core.tags.tree import KnowledgeTree, nearest_by_cosine, normalise_rows, validate_tree
from mig_assets.core.validation import first_few


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
        return normalise_rows(self.sums)


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
    return names, normalise_rows(vectors), counts


def _make_level(vectors, names, descriptions, counts, sizes, labels, level, refine, shortlist) -> _Level:
    if refine is not None:
        labels, parents = refine_level(level, refine, vectors, names, descriptions, counts, labels, shortlist)
    else:
        parents = name_level(vectors, names, descriptions, counts, labels)
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
    seed, max_iter, tol: the K-Means of every level (see :func:`~mig_assets.core.tags.clustering.kmeans`; level ℓ uses seed + ℓ − 1).
    refine: a :class:`TreeRefiner` (e.g. LLM-backed) run on every level, with ``shortlist``
        candidate parents per child for reassignment; None names nodes with :class:`~mig_assets.core.tags.naming.CentralRefiner`'s
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
        core_centroids = normalise_rows(cluster_sums(vectors[core_rows], leaves.parent_of_children, len(leaves.names)))
        tag2leaf[rare] = nearest_by_cosine(vectors[rare], core_centroids)[0]
    n_leaves = len(leaves.names)
    leaves.parent_of_children = tag2leaf
    leaves.sums = cluster_sums(vectors, tag2leaf, n_leaves)
    leaves.counts = np.bincount(tag2leaf, weights=occurrences, minlength=n_leaves)
    leaves.sizes = np.bincount(tag2leaf, minlength=n_leaves).astype(np.int64)
    if refine is None:  # rename leaves now that the rare tags are attached
        named = name_level(vectors, names, [""] * T, occurrences, tag2leaf)
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
        parent.sums = cluster_sums(below.sums, parent.parent_of_children, len(parent.names))
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
        centroids=normalise_rows(np.concatenate([level.sums for level in levels] + [root_sum]).astype(np.float32)),
        tag_names=list(tag_names),
        tag2leaf=tag2leaf.astype(np.int64),
    )
    validate_tree(tree)
    return tree
