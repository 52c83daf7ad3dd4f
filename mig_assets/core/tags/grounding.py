"""Grounding tags on the knowledge tree (``shared/specs/tags.md`` §1.6): known tags by ``tag2leaf``,
unseen ones to the nearest leaf by cosine above a threshold."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from mig_assets.core.tags.tree import KnowledgeTree, nearest_by_cosine, normalise_rows
from mig_assets.core.validation import first_few


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
        vectors = normalise_rows(vectors)
        leaf_centroids = tree.centroids[: tree.n_leaves]
        unseen = np.flatnonzero(~known)
        if len(unseen):
            bad = unseen[~np.isfinite(vectors[unseen]).all(axis=1) | ~vectors[unseen].any(axis=1)]
            if len(bad):
                offending = first_few([names[i] for i in bad])
                raise ValueError(f"embeddings of unseen tags must be finite and non-zero; offending {offending}")
            nearest, cosine = nearest_by_cosine(vectors[unseen], leaf_centroids)
            cosine = cosine.astype(np.float64)
            similarities[unseen] = cosine
            leaf_ids[unseen] = np.where(cosine >= threshold, nearest, -1)
        known_rows = np.flatnonzero(known)
        finite = np.isfinite(vectors[known_rows]).all(axis=1)
        similarities[known_rows[finite]] = np.einsum("ij,ij->i", vectors[known_rows[finite]], leaf_centroids[leaf_ids[known_rows[finite]]])
    counts = {"known": int(known.sum()), "nearest": int(((leaf_ids >= 0) & ~known).sum()), "unassigned": int((leaf_ids < 0).sum())}
    return Grounding(leaf_ids, similarities, counts)
