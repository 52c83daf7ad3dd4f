"""How stable a selection is under perturbations of what it depends on: overlap of the picked sets.

For sets S_a, S_b the Jaccard overlap is |S_a ∩ S_b| / |S_a ∪ S_b| (1 for two empty sets); the
stable share is |∩_p S_p| / |S_base|, the share of the base selection's picks that every
perturbed run also picks. MIG is deterministic given its inputs, so its perturbations are the
label graph's threshold (``tau`` ± ``delta``, the graph rebuilt from the same tag embeddings);
TAGS's are the tree's seed and number of leaves. Both add, when a second embedding model is given,
the graph (MIG, at the same ``tau``) or the tree (TAGS, same branching and seed) rebuilt over that
model's tag vectors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from mig_assets.core.embedding.encoder import arrow_to_vectors
from mig_assets.core.mig.algorithm import select
from mig_assets.core.mig.problem import MigParams, build_label_graph
from mig_assets.core.selection.budget import token_prefix
from mig_assets.core.selection.inputs import LabelGraph, PoolArrays
from mig_assets.core.selection.request import SelectionRequest
from mig_assets.core.selection.run import mig_matrix, tags_problem

NO_ALTERNATE_MODEL = "no: no second embedding model configured (the stability config's alternate_embedding_model)"


@dataclass(frozen=True)
class TagVectors:
    """Unit vectors of tags from one embedding model (``model_id`` names it in the runs)."""

    tags: list[str]
    vectors: np.ndarray  # (T, D) float32, row t <-> tags[t]
    model_id: str

    def of(self, labels: list[str]) -> np.ndarray:
        """The rows of ``labels``, in that order; an error names labels without a vector."""
        row_of = {tag: i for i, tag in enumerate(self.tags)}
        missing = [label for label in labels if label not in row_of]
        if missing:
            raise ValueError(f"{len(missing)} labels have no {self.model_id} vector: {missing[:5]}")
        return self.vectors[[row_of[label] for label in labels]]


def read_tag_vectors(tag_embeddings_file) -> TagVectors:
    """The ``tag_embeddings`` asset's vectors and the model that made them."""
    table = pq.read_table(tag_embeddings_file, columns=["tag", "model_id", "embedding"])
    model_ids = sorted(set(table.column("model_id").to_pylist()))
    return TagVectors(table.column("tag").to_pylist(), arrow_to_vectors(table.column("embedding")), ", ".join(model_ids))


def within_token_budget(selections: dict[str, np.ndarray], tokens: np.ndarray, budget: int) -> dict[str, np.ndarray]:
    """Each run's picks under a token budget: the longest prefix of its order whose tokens fit, as a
    selection with that budget keeps them (:func:`~mig_assets.core.selection.budget.token_prefix`)."""
    return {name: order[: len(token_prefix(order, tokens, budget))] for name, order in selections.items()}


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


def graph_at_tau(graph: LabelGraph, vectors: TagVectors, tau: float) -> LabelGraph:
    """The same labels' graph at threshold ``tau`` (clipped to [0, 1]) over ``vectors``."""
    return dataclasses.replace(graph, weights=build_label_graph(vectors.of(graph.labels), min(max(tau, 0.0), 1.0)))


def perturbed_trees(vectors: TagVectors, counts: dict[str, int], *, branching: float, top_size: int, seed: int, leaf_factors=(0.8, 1.25)) -> dict:
    """Knowledge trees over ``vectors``, each one perturbation away from the config (``branching``,
    ``top_size``, ``seed``): the next K-Means seed, and ``leaf_factors`` times as many leaves (tags
    per leaf divided by the factor). Named by what changed."""
    from mig_assets.core.tags.build import build_tree

    weights = np.array([counts.get(tag, 1) for tag in vectors.tags], dtype=np.float64)
    trees = {f"tree seed {seed + 1}": build_tree(vectors.tags, vectors.vectors, weights, branching=branching, top_size=top_size, seed=seed + 1)}
    for factor in leaf_factors:
        tree = build_tree(vectors.tags, vectors.vectors, weights, branching=branching, top_size=top_size, leaf_branching=branching / factor, seed=seed)
        trees[f"tree with {tree.n_leaves} leaves (x{factor:g})"] = tree
    return trees


def mig_perturbed_runs(
    pool: PoolArrays, graph: LabelGraph, tau: float, k: int, stored: TagVectors, *, tau_delta: float, params: MigParams, alternate: TagVectors | None = None
) -> tuple[dict[str, np.ndarray], list[dict]]:
    """MIG's k picks on the current graph (the base), on graphs at tau ± ``tau_delta`` over the
    ``stored`` vectors, and on the graph at tau over the ``alternate`` model's vectors when given;
    with a note per perturbation that was not applied."""
    graphs = {f"tau {tau:g} (base)": graph}
    for shifted in (tau - tau_delta, tau + tau_delta):
        graphs[f"tau {shifted:g}"] = graph_at_tau(graph, stored, shifted)
    if alternate is not None:
        graphs[f"embedding model {alternate.model_id}, tau {tau:g}"] = graph_at_tau(graph, alternate, tau)
    notes = [
        {"perturbation": "seed", "applied": "no: MIG's greedy is deterministic given its inputs (ties go to the earlier sample)"},
        embedding_note(stored, alternate),
    ]
    return {name: select(mig_matrix(pool, g, params), k, params).order for name, g in graphs.items()}, notes


def tags_perturbed_runs(
    pool: PoolArrays,
    tree,
    k: int,
    stored: TagVectors,
    counts: dict[str, int],
    request: SelectionRequest,
    *,
    branching: float,
    top_size: int,
    seed: int,
    alternate: TagVectors | None = None,
) -> tuple[dict[str, np.ndarray], list[dict]]:
    """TAGS's k picks (unaligned: a rebuilt tree has no target grounded on its leaves) on the current
    tree (the base), on trees over the ``stored`` vectors with the next seed and fewer and more
    leaves, and on the tree over the ``alternate`` model's vectors (same branching and seed) when given."""
    from mig_assets.core.tags.build import build_tree
    from mig_assets.core.tags.modes import select as tags_select

    trees = {f"current tree, {tree.n_leaves} leaves (base)": tree}
    trees |= perturbed_trees(stored, counts, branching=branching, top_size=top_size, seed=seed)
    if alternate is not None:
        weights = np.array([counts.get(tag, 1) for tag in alternate.tags], dtype=np.float64)
        rebuilt = build_tree(alternate.tags, alternate.vectors, weights, branching=branching, top_size=top_size, seed=seed)
        trees[f"embedding model {alternate.model_id}, {rebuilt.n_leaves} leaves"] = rebuilt
    params = dataclasses.replace(request.tags, align="none")
    notes = [
        {"perturbation": "alignment", "applied": "every run unaligned: a perturbed tree has no target profile grounded on its leaves"},
        embedding_note(stored, alternate),
    ]
    runs = {name: tags_select(tags_problem(pool, t, request.gamma, request.level_weights), k, params).order for name, t in trees.items()}
    return runs, notes


def embedding_note(stored: TagVectors, alternate: TagVectors | None) -> dict:
    """The report's line on the embedding-model perturbation: applied with which model, or why not."""
    if alternate is None:
        return {"perturbation": "embedding model", "applied": NO_ALTERNATE_MODEL}
    return {"perturbation": "embedding model", "applied": f"yes: the tags re-embedded with {alternate.model_id} (the stored vectors are {stored.model_id})"}
