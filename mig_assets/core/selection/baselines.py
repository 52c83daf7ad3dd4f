"""Baseline selectors to compare MIG and TAGS against, on numpy arrays (``shared/specs/tags.md`` §2.3, §3.2).

Every selector returns the picked pool rows as an int64 array, in pick order, so that a prefix is the
selection of a smaller budget. Results are deterministic: ties go to the lowest row, and the only
random choice (k-center's first point) is seeded. Random selection is :func:`mig.random_select`.

Cosine similarity is taken between L2-normalised rows; a zero row stays zero, so it has cosine 0 with
every row, itself included (it is never a near-duplicate of anything). Similarities are computed in
float32, as Deita's torch code does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from mig_assets.core.validation import check_budget, check_embeddings, check_scores

_DEITA_BLOCK = 1024  # candidates compared with the accepted set in one matrix product


def unit_rows(embeddings: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Rows divided by their L2 norm, in ``dtype``; zero rows stay zero (cosine 0 with every row)."""
    vectors = np.asarray(embeddings, dtype=dtype)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def _by_score(scores: np.ndarray) -> np.ndarray:
    """Rows by decreasing score, ties to the lowest row."""
    return np.argsort(-scores, kind="stable").astype(np.int64)


def top_quality(scores, k: int) -> np.ndarray:
    """The k rows of highest score, best first (ties to the lowest row).

    ``scores`` (N,) must be finite (any sign). k ≥ N returns every row; k = 0 an empty array.
    """
    scores = check_scores(scores)
    k = check_budget(len(scores), k)
    return _by_score(scores)[:k]


def deita_filter(scores, embeddings, k: int, threshold: float = 0.9) -> np.ndarray:
    """Deita's score-first, diversity-aware Repr Filter (hkust-nlp/deita ``Combined_Filter``, batch size 1).

    Rows are visited by decreasing score (ties to the lowest row); a row is accepted when
    max_{j accepted} cos(e_i, e_j) ≤ ``threshold`` (Deita rejects it when the maximum is > threshold;
    the first row is always accepted), until k rows are accepted. When fewer than k rows pass, Deita
    stops there: the result is shorter than k. Embeddings (N, d) are L2-normalised (a zero row has
    cosine 0 with every row, so it is accepted whenever threshold ≥ 0). Candidates are compared with the
    accepted set in blocks of matrix products, and with each other inside a block one at a time:
    O(visited · accepted · d) arithmetic, the same pairs as the one-by-one loop.

    threshold: cosine similarity in [−1, 1] above which a row counts as a near-duplicate (Deita: 0.9).
    """
    embeddings = check_embeddings(embeddings)
    scores = check_scores(scores, len(embeddings))
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    k = check_budget(len(scores), k)
    unit = unit_rows(embeddings)
    limit = np.float32(threshold)
    candidates = _by_score(scores)
    accepted_vectors = np.empty((k, unit.shape[1]), dtype=np.float32)
    accepted: list[int] = []
    for start in range(0, len(candidates), _DEITA_BLOCK):
        if len(accepted) == k:
            break
        block = candidates[start : start + _DEITA_BLOCK]
        vectors = unit[block]
        clear = np.ones(len(block), dtype=bool)
        if accepted:
            clear = (vectors @ accepted_vectors[: len(accepted)].T).max(axis=1) <= limit
        within = vectors @ vectors.T  # similarities among the block's candidates
        taken: list[int] = []  # block positions accepted so far
        for position in np.flatnonzero(clear).tolist():
            if taken and (within[position, taken] > limit).any():
                continue
            accepted_vectors[len(accepted)] = vectors[position]
            accepted.append(int(block[position]))
            taken.append(position)
            if len(accepted) == k:
                break
    return np.asarray(accepted, dtype=np.int64)


def _tag_sets(tags: Sequence[Sequence[str]]) -> list[frozenset[str]]:
    sets = []
    for row, sample_tags in enumerate(tags):
        if isinstance(sample_tags, (str, bytes)):
            raise ValueError(f"sample {row}'s tags must be a list of tag strings, got the string {sample_tags!r}")
        sample_set = frozenset(sample_tags)
        if not all(isinstance(tag, str) for tag in sample_set):
            raise ValueError(f"sample {row}'s tags must all be strings, got {sorted(map(repr, sample_set))}")
        sets.append(sample_set)
    return sets


def instag_sampling(tags: Sequence[Sequence[str]], k: int) -> np.ndarray:
    """InsTag's complexity-first diverse sampling (Lu et al. 2024, Algorithm 1; spec §2.3).

    ``tags[i]`` lists sample i's canonical tags (repeats count once). Rows are sorted by their number
    of distinct tags, descending (ties to the lowest row). Then passes are repeated until k rows are
    picked: each pass starts with an empty set ``seen`` and walks the unpicked rows in sorted order,
    picking a row when its tags are not a subset of ``seen`` (it brings a new tag) and adding its tags
    to ``seen``. A pass ends early once no unpicked row has a tag outside ``seen`` (the rest of the
    walk could pick nothing). Rows without tags never bring a new tag, so they are never picked: the
    result is shorter than k when fewer than k rows have tags.
    """
    sets = _tag_sets(tags)
    k = check_budget(len(sets), k)
    remaining = [row for row in sorted(range(len(sets)), key=lambda row: -len(sets[row])) if sets[row]]
    unpicked_count = Counter(tag for row in remaining for tag in sets[row])  # tag -> unpicked rows with it
    picked: list[int] = []
    while len(picked) < k and remaining:
        seen: set[str] = set()
        unseen = len(unpicked_count)  # distinct tags of unpicked rows that are not in seen
        left = []
        for position, row in enumerate(remaining):
            if unseen == 0 or len(picked) == k:
                left.extend(remaining[position:])
                break
            new = sets[row] - seen
            if not new:
                left.append(row)
                continue
            picked.append(row)
            seen |= new
            unseen -= len(new)  # each new tag was unseen; it is now seen or has no unpicked row left
            for tag in sets[row]:
                unpicked_count[tag] -= 1
                if not unpicked_count[tag]:
                    del unpicked_count[tag]
        remaining = left
    return np.asarray(picked, dtype=np.int64)


def k_center_greedy(embeddings, k: int, seed: int = 0) -> np.ndarray:
    """Farthest-first traversal, the greedy k-center core set of Sener & Savarese (2018), on cosine distance.

    d(i, j) = 1 − cos(e_i, e_j) (for L2-normalised rows this orders pairs as Euclidean distance does;
    a zero row is at distance 1 from every row). The first center is the row
    ``np.random.default_rng(seed).integers(N)``; each next center maximises min_{c chosen} d(i, c)
    over unchosen rows (ties to the lowest row). A running min-distance vector makes it O(N·k·d) time,
    O(N·d) memory. k ≥ N returns every row; k = 0 an empty array.
    """
    embeddings = check_embeddings(embeddings)
    k = check_budget(len(embeddings), k)
    unit = unit_rows(embeddings)
    order = np.empty(k, dtype=np.int64)
    if k == 0:
        return order
    nearest = np.full(len(unit), np.inf, dtype=np.float32)  # distance to the closest chosen center
    distance = np.empty(len(unit), dtype=np.float32)
    row = int(np.random.default_rng(seed).integers(len(unit)))
    for pick in range(k):
        order[pick] = row
        if pick == k - 1:
            break
        np.matmul(unit, unit[row], out=distance)
        np.subtract(np.float32(1), distance, out=distance)
        np.minimum(nearest, distance, out=nearest)
        nearest[row] = -np.inf  # chosen rows never come back
        row = int(np.argmax(nearest))  # the first maximum: ties go to the lowest row
    return order
