"""Naming and refining the knowledge tree's levels (``shared/specs/tags.md`` §1.5): the
:class:`TreeRefiner` hooks (an LLM refiner lives in ``core/tags/refine.py``), the deterministic
:class:`CentralRefiner`, and the per-level steps :func:`refine_level` and :func:`name_level`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from mig_assets.core.tags.clustering import canonical_labels, cluster_sums
from mig_assets.core.tags.tree import ASSIGN_BLOCK_ELEMENTS, normalise_rows
from mig_assets.core.validation import first_few

_DESCRIPTION_TERMS = 5  # child names listed in a default description


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
    """The deterministic no-LLM :class:`TreeRefiner`, and the naming rule ``build_tree`` uses by default.

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
    block = max(1, ASSIGN_BLOCK_ELEMENTS // max(len(centroids), 1))
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


def refine_level(
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
    centroids = normalise_rows(cluster_sums(vectors, labels, n_parents))
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

    centroids = normalise_rows(cluster_sums(vectors, labels, len(parents)))
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

    kept = canonical_labels(labels)  # drops parents left empty, renumbers by first child
    first_old = np.full(int(kept.max()) + 1, -1, dtype=np.int64)
    first_old[kept[::-1]] = labels[::-1]
    parents = [parents[old] for old in first_old.tolist()]
    labels = kept
    centroids = normalise_rows(cluster_sums(vectors, labels, len(parents)))
    centrality = _centrality(vectors, labels, centroids)
    final_children = [_concepts(names, descriptions, counts, centrality, rows) for rows in _members(labels, len(parents))]
    return labels, _check_pairs(refiner.rename(level, parents, final_children), len(parents), "rename")


def name_level(vectors, names, descriptions, counts, labels) -> list[tuple[str, str]]:
    """Each cluster's ``(name, description)`` by :class:`CentralRefiner`'s rule (the tree without refinement)."""
    n_parents = int(labels.max()) + 1
    centroids = normalise_rows(cluster_sums(vectors, labels, n_parents))
    centrality = _centrality(vectors, labels, centroids)
    clusters = [_concepts(names, descriptions, counts, centrality, rows) for rows in _members(labels, n_parents)]
    return CentralRefiner().summarize(0, clusters)
