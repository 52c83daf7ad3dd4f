"""The TAGS knowledge tree (``shared/specs/tags.md`` §1.5–1.6): the model, its checks and its storage.

Nodes are numbered leaves first: leaves (level 1, the first-level concepts of the spec's
"Option 2") are nodes ``0 .. n_leaves-1``, then level 2, and so on up to the virtual root, the last
node. Canonical tags are not nodes: each hangs below exactly one leaf (``tag2leaf``) and is the
grounding key of its samples. Every parent is exactly one level above its children.

Built by ``core/tags/build.py`` (K-Means levels of ``core/tags/clustering.py``, names from
``core/tags/naming.py``); new tags are placed by ``core/tags/grounding.py``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mig_assets.core.embedding.encoder import arrow_to_vectors

ASSIGN_BLOCK_ELEMENTS = 1 << 23  # similarities computed per block (32 MiB of float32)


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

    def leaf_of(self, tags: Sequence[str] | pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Leaf of each known tag, −1 for tags not in the tree (see ``core/tags/grounding.py`` for those).
        Looked up in Arrow (a hash of the tree's tag names, which are distinct), no Python object per tag."""
        tags = tags if isinstance(tags, (pa.Array, pa.ChunkedArray)) else pa.array(list(tags), pa.string())
        position = pc.fill_null(pc.index_in(tags, value_set=self._tag_names()), -1).to_numpy().astype(np.int64)
        return (
            np.where(position >= 0, np.asarray(self.tag2leaf, np.int64)[np.maximum(position, 0)], -1)
            if len(self.tag_names)
            else np.full(len(position), -1, np.int64)
        )

    def _tag_names(self) -> pa.Array:
        cached = self.__dict__.get("_tag_names_cache")
        if cached is None:
            cached = pa.array(list(self.tag_names), pa.string())
            object.__setattr__(self, "_tag_names_cache", cached)
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
        children: list[list[int]] = [[] for _ in range(self.n_nodes)]
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


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def nearest_by_cosine(points: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the centre with the largest x·c (ties to the lowest) and that cosine; computed in row blocks."""
    labels = np.empty(len(points), dtype=np.int64)
    scores = np.empty(len(points), dtype=points.dtype)
    block = max(1, ASSIGN_BLOCK_ELEMENTS // max(len(centres), 1))
    for start in range(0, len(points), block):
        similarity = points[start : start + block] @ centres.T
        labels[start : start + block] = similarity.argmax(axis=1)
        scores[start : start + block] = similarity[np.arange(len(similarity)), labels[start : start + block]]
    return labels, scores


def load_tree(folder: Path) -> tuple[KnowledgeTree, dict]:
    """The knowledge tree stored in ``folder`` (tree.json + centroids.parquet), its version and embedding model."""
    if not (folder / "tree.json").exists():
        raise ValueError("TAGS needs the knowledge tree: materialize knowledge_tree first")
    data = json.loads((folder / "tree.json").read_text())
    centroids = arrow_to_vectors(pq.read_table(folder / "centroids.parquet").column("centroid"))
    info = {"version": data.get("version", ""), "embedding_model": data.get("embedding_model", "")}
    return KnowledgeTree.from_dict(data, centroids), info
