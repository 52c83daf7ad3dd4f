"""How stable a selection is under perturbations of what it depends on: overlap of the picked sets.

For sets S_a, S_b the Jaccard overlap is |S_a ∩ S_b| / |S_a ∪ S_b| (1 for two empty sets); the
stable share is |∩_p S_p| / |S_base|, the share of the base selection's picks that every
perturbed run also picks. MIG is deterministic given its inputs, so its perturbations are the
label graph's threshold (``tau`` ± ``delta``, the graph rebuilt from the same tag embeddings);
TAGS adds the tree's seed and number of leaves (built by the caller).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq

from mig_assets.core.embedding.encoder import arrow_to_vectors
from mig_assets.core.mig.problem import build_label_graph
from mig_assets.core.selection.inputs import LabelGraph


def jaccard_matrix(selections: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Names (in the given order) and the symmetric matrix of pairwise Jaccard overlaps of their sets."""
    names = list(selections)
    sets = [set(np.asarray(selections[name]).tolist()) for name in names]
    matrix = np.ones((len(names), len(names)))
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            union = sets[a] | sets[b]
            matrix[a, b] = matrix[b, a] = len(sets[a] & sets[b]) / len(union) if union else 1.0
    return names, matrix


def stable_share(selections: dict[str, np.ndarray], base: str) -> float:
    """Share of the ``base`` selection's picks that every selection picks."""
    base_set = set(np.asarray(selections[base]).tolist())
    if not base_set:
        return 1.0
    common = set.intersection(*(set(np.asarray(rows).tolist()) for rows in selections.values()))
    return len(common & base_set) / len(base_set)


def graph_at_tau(graph: LabelGraph, tag_embeddings_file, tau: float) -> LabelGraph:
    """The same labels' graph at another threshold, rebuilt from the stored tag embeddings."""
    table = pq.read_table(tag_embeddings_file, columns=["tag", "embedding"])
    row_of = {tag: i for i, tag in enumerate(table.column("tag").to_pylist())}
    missing = [label for label in graph.labels if label not in row_of]
    if missing:
        raise ValueError(f"{len(missing)} graph labels have no row in {tag_embeddings_file}: {missing[:5]}")
    vectors = arrow_to_vectors(table.column("embedding"))[[row_of[label] for label in graph.labels]]
    return dataclasses.replace(graph, weights=build_label_graph(vectors, min(max(tau, 0.0), 1.0)))


def perturbed_trees(tag_embeddings_file, counts: dict[str, int], *, branching: float, top_size: int, seed: int, leaf_factors=(0.8, 1.25)) -> dict:
    """Knowledge trees over the stored tag embeddings, each one perturbation away from the config
    (``branching``, ``top_size``, ``seed``): the next K-Means seed, and ``leaf_factors`` times as many
    leaves (tags per leaf divided by the factor). Named by what changed."""
    from mig_assets.core.tags.build import build_tree

    table = pq.read_table(tag_embeddings_file, columns=["tag", "embedding"])
    tags, vectors = table.column("tag").to_pylist(), arrow_to_vectors(table.column("embedding"))
    weights = np.array([counts.get(tag, 1) for tag in tags], dtype=np.float64)
    trees = {f"tree seed {seed + 1}": build_tree(tags, vectors, weights, branching=branching, top_size=top_size, seed=seed + 1)}
    for factor in leaf_factors:
        tree = build_tree(tags, vectors, weights, branching=branching, top_size=top_size, leaf_branching=branching / factor, seed=seed)
        trees[f"tree with {tree.n_leaves} leaves (x{factor:g})"] = tree
    return trees
