"""Tests of the TAGS knowledge tree: layout, determinism, tiny inputs, naming, refinement hooks, grounding."""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mig_assets.core.tags.build import build_tree
from mig_assets.core.tags.clustering import kmeans
from mig_assets.core.tags.grounding import ground_tags
from mig_assets.core.tags.modes import select
from mig_assets.core.tags.naming import CentralRefiner, Concept, TreeRefiner
from mig_assets.core.tags.params import TagsParams
from mig_assets.core.tags.problem import ancestor_weights, build_problem
from mig_assets.core.tags.tree import KnowledgeTree, validate_tree


def fake_embed(texts, dim: int = 512) -> np.ndarray:
    """FakeEmbedder (spec §5.5): signed hashed character 3-grams of " text ", L2-normalised."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        padded = f" {text.lower()} "
        for j in range(len(padded) - 2):
            digest = int.from_bytes(hashlib.blake2b(padded[j : j + 3].encode(), digest_size=8).digest(), "little")
            out[row, digest % dim] += 1.0 if (digest >> 40) & 1 else -1.0
    return out / np.linalg.norm(out, axis=1, keepdims=True)


# 5 domains × 6 concepts; each concept has surface variants that must share a leaf
DOMAINS = {
    "programming": ["python decorator", "sorting algorithm", "binary search", "regex pattern", "unit testing", "memory leak"],
    "mathematics": ["prime factorization", "integral calculus", "matrix determinant", "probability theory", "geometric proof", "quadratic equation"],
    "cooking": ["sourdough bread", "tomato sauce", "chocolate cake", "grilled salmon", "vegetable soup", "pancake batter"],
    "travel": ["visa application", "hotel booking", "airport transfer", "backpacking europe", "passport renewal", "train itinerary"],
    "health": ["blood pressure", "vitamin deficiency", "sleep hygiene", "knee injury", "allergy symptoms", "cholesterol level"],
}


def variants(concept: str) -> list[str]:
    return [concept, concept + "s", concept.replace(" ", "-")]


def hand_made_tags() -> tuple[list[str], list[str]]:
    tags, concept_of = [], []
    for concepts in DOMAINS.values():
        for concept in concepts:
            for variant in variants(concept):
                tags.append(variant)
                concept_of.append(concept)
    return tags, concept_of


def clustered_tags(seed: int, n_tags: int, dim: int = 16, n_centres: int = 12):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_centres, dim))
    embeddings = centres[rng.integers(n_centres, size=n_tags)] + 0.3 * rng.normal(size=(n_tags, dim))
    return [f"tag {i}" for i in range(n_tags)], embeddings, rng.integers(1, 50, size=n_tags)


def assert_same_tree(a: KnowledgeTree, b: KnowledgeTree) -> None:
    assert a.names == b.names and a.descriptions == b.descriptions
    np.testing.assert_array_equal(a.parents, b.parents)
    np.testing.assert_array_equal(a.levels, b.levels)
    np.testing.assert_array_equal(a.tag2leaf, b.tag2leaf)
    np.testing.assert_array_equal(a.centroids, b.centroids)


# --------------------------------------------------------------------------------------------------------------------
# layout and invariants


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_tag_maps_to_exactly_one_leaf_and_layout_holds(seed):
    names, embeddings, counts = clustered_tags(seed, 400)
    tree = build_tree(names, embeddings, counts, branching=5, top_size=6, seed=seed)
    validate_tree(tree)
    assert tree.tag_names == names
    assert ((0 <= tree.tag2leaf) & (tree.tag2leaf < tree.n_leaves)).all()
    assert (tree.levels[: tree.n_leaves] == 1).all() and (tree.levels[tree.n_leaves :] > 1).all()
    # sizes and counts add up level by level; every leaf holds a tag
    np.testing.assert_array_equal(tree.sizes[: tree.n_leaves], np.bincount(tree.tag2leaf, minlength=tree.n_leaves))
    assert (tree.sizes[: tree.n_leaves] > 0).all()
    for level in range(1, tree.depth + 1):
        assert tree.sizes[tree.levels == level].sum() == len(names)
        assert tree.counts[tree.levels == level].sum() == pytest.approx(counts.sum())
    # the root is last and alone on its level; parents are one level up
    assert tree.root == tree.n_nodes - 1 and tree.parents[tree.root] == -1
    assert (tree.levels[tree.parents[:-1]] == tree.levels[:-1] + 1).all()


@pytest.mark.parametrize(("n_tags", "branching", "top_size"), [(400, 5, 6), (1000, 10, 20), (300, 3, 4)])
def test_depth_is_bounded_and_levels_shrink_to_top_size(n_tags, branching, top_size):
    names, embeddings, _ = clustered_tags(0, n_tags, n_centres=40)
    tree = build_tree(names, embeddings, branching=branching, top_size=top_size)
    per_level = np.bincount(tree.levels)[1:]
    assert per_level[-1] == 1  # the root
    assert per_level[-2] <= top_size  # the top concept level
    assert (per_level[:-2] > top_size).all()  # lower levels had to be clustered further
    assert tree.n_leaves <= math.ceil(n_tags / branching)
    bound = 2 + math.ceil(math.log(max(math.ceil(n_tags / branching) / top_size, 1), branching)) + 1
    assert tree.depth <= bound


def test_top_level_has_top_size_nodes_when_leaves_exceed_it():
    names, embeddings, _ = clustered_tags(3, 600, n_centres=60)
    tree = build_tree(names, embeddings, branching=10, top_size=7)
    assert np.count_nonzero(tree.levels == tree.depth - 1) == 7


def test_zero_tags_is_an_error():
    with pytest.raises(ValueError, match="zero tags"):
        build_tree([], np.zeros((0, 8)))


@pytest.mark.parametrize("n_tags", [1, 2, 7])
def test_fewer_tags_than_branching_give_one_leaf_under_the_root(n_tags):
    names, embeddings, _ = clustered_tags(0, n_tags)
    tree = build_tree(names, embeddings, branching=10)
    assert tree.n_leaves == 1 and tree.n_nodes == 2 and tree.depth == 2
    assert (tree.tag2leaf == 0).all() and tree.sizes.tolist() == [n_tags, n_tags]


def test_bad_inputs_are_refused():
    names, embeddings, counts = clustered_tags(0, 20)
    with pytest.raises(ValueError, match="unique"):
        build_tree(names[:-1] + [names[0]], embeddings)
    with pytest.raises(ValueError, match="shape"):
        build_tree(names, embeddings[:-1])
    bad = embeddings.copy()
    bad[3] = np.nan
    bad[5] = 0
    with pytest.raises(ValueError, match=r"offending rows \[3, 5\]"):
        build_tree(names, bad)
    with pytest.raises(ValueError, match="counts"):
        build_tree(names, embeddings, -counts)
    with pytest.raises(ValueError, match="branching"):
        build_tree(names, embeddings, branching=1)


def test_same_seed_same_tree_and_json_round_trip():
    names, embeddings, counts = clustered_tags(4, 500)
    first = build_tree(names, embeddings, counts, branching=6, top_size=5, seed=7)
    second = build_tree(list(names), embeddings.copy(), counts.copy(), branching=6, top_size=5, seed=7)
    assert_same_tree(first, second)
    restored = KnowledgeTree.from_dict(first.to_dict(), first.centroids)
    assert_same_tree(first, restored)
    table = first.nodes_table()
    assert table["node_id"] == list(range(first.n_nodes))
    assert table["n_children"][-1] == np.count_nonzero(first.levels == first.depth - 1)
    assert first.tags_table()["leaf"] == first.tag2leaf.tolist()


def test_kmeans_is_deterministic_and_numbers_clusters_by_first_member():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(500, 8)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    labels = kmeans(points, 20, seed=3)
    np.testing.assert_array_equal(labels, kmeans(points, 20, seed=3))
    first_members = [int(np.flatnonzero(labels == c)[0]) for c in range(labels.max() + 1)]
    assert first_members == sorted(first_members) and labels[0] == 0
    # duplicated points: fewer distinct points than k gives fewer, non-empty clusters
    assert kmeans(np.repeat(points[:3], 10, axis=0), 8).max() + 1 <= 3


def test_kmeans_recovers_planted_clusters_through_the_projected_subsampled_seeding():
    """384-d rows (seeding on a 64-d projection) and init_size < n (seeding on a subsample): 12 tight,
    well-separated clusters come back exactly, the same labels on every call."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(12, 384))
    planted = rng.integers(12, size=3_000)
    points = (centres[planted] + 0.05 * rng.normal(size=(3_000, 384))).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    labels = kmeans(points, 12, seed=1, init_size=600, n_init=3)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, kmeans(points, 12, seed=1, init_size=600, n_init=3))
    # one cluster per planted centre: the two partitions match up to the numbering
    assert len(set(zip(planted.tolist(), labels.tolist()))) == 12 == labels.max() + 1


# --------------------------------------------------------------------------------------------------------------------
# semantics on a hand-made tag set with the fake embedder


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synonyms_share_a_leaf(seed):
    tags, concept_of = hand_made_tags()
    tree = build_tree(tags, fake_embed(tags), branching=3, top_size=5, seed=seed)
    leaf_of_concept: dict[str, set] = {}
    for tag, concept in zip(tags, concept_of):
        leaf_of_concept.setdefault(concept, set()).add(int(tree.tag2leaf[tags.index(tag)]))
    split = {concept: leaves for concept, leaves in leaf_of_concept.items() if len(leaves) > 1}
    assert not split
    assert tree.n_leaves == math.ceil(len(tags) / 3)


def test_default_names_are_central_children_unique_within_a_level():
    tags, _ = hand_made_tags()
    counts = np.ones(len(tags))
    counts[tags.index("binary search")] = 100  # the frequent spelling names its leaf
    tree = build_tree(tags, fake_embed(tags), counts, branching=3, top_size=5, min_count=1)
    leaf = tree.tag2leaf[tags.index("binary search")]
    assert tree.names[leaf] == "binary search"
    for level in range(1, tree.depth):
        names = [tree.names[v] for v in np.flatnonzero(tree.levels == level)]
        assert len(set(names)) == len(names)
    for node in np.flatnonzero(tree.levels > 1)[:-1]:  # a parent is named after one of its children
        assert tree.names[node] in {tree.names[c] for c in tree.children(int(node))}
    for leaf_id in range(tree.n_leaves):
        members = {tree.tag_names[t] for t in np.flatnonzero(tree.tag2leaf == leaf_id)}
        assert tree.names[leaf_id] in members


def test_rare_tags_attach_to_the_nearest_leaf_and_never_seed_one():
    tags, concept_of = hand_made_tags()
    counts = np.array([5 if tag == concept else 1 for tag, concept in zip(tags, concept_of)])  # variants are rare
    tree = build_tree(tags, fake_embed(tags), counts, branching=2, top_size=5, min_count=2)
    assert tree.n_leaves == math.ceil(30 / 2)  # only the 30 frequent spellings were clustered
    for tag, concept in zip(tags, concept_of):
        assert tree.tag2leaf[tags.index(tag)] == tree.tag2leaf[tags.index(concept)]


def test_ground_tags_known_unseen_above_and_below_threshold():
    tags, _ = hand_made_tags()
    tree = build_tree(tags, fake_embed(tags), branching=3, top_size=5)
    new = ["sorting algorithm", "sorting-algorithms", "chocolate cakes!", "qzx wvu kjh"]
    grounding = ground_tags(tree, new, fake_embed(new), threshold=0.65)
    leaf_ids, similarities, counts = grounding
    expected = tree.tag2leaf[tags.index("sorting algorithm")]
    assert leaf_ids[0] == expected and leaf_ids[1] == expected
    assert leaf_ids[2] == tree.tag2leaf[tags.index("chocolate cake")]
    assert leaf_ids[3] == -1 and similarities[3] < 0.65 <= similarities[1]
    assert counts == {"known": 1, "nearest": 2, "unassigned": 1}
    # a threshold above every similarity leaves all unseen tags unassigned; known tags still map
    strict = ground_tags(tree, new, fake_embed(new), threshold=1.01)
    assert strict.leaf_ids.tolist() == [expected, -1, -1, -1]
    # known tags need no embedding; unseen ones do
    assert ground_tags(tree, ["binary search"]).leaf_ids[0] == tree.tag2leaf[tags.index("binary search")]
    with pytest.raises(ValueError, match="not in the tree"):
        ground_tags(tree, ["binary search", "brand new tag"])


# --------------------------------------------------------------------------------------------------------------------
# refinement hooks


def stem(word: str) -> str:
    return word[:-1] if word.endswith("s") else word


class FakeRefinerLLM:
    """Spec §5.5: summarize = most frequent head noun + " (general)"; deduplicate = equal after stemming;
    reassign = highest FakeEmbedder cosine among the candidates; rename = unchanged. Records its calls."""

    def __init__(self):
        self.calls: list[tuple] = []

    @staticmethod
    def head(name: str) -> str:
        return stem(name.replace("-", " ").replace(" (general)", "").split()[-1])

    def summarize(self, level, clusters):
        self.calls.append(("summarize", level, len(clusters)))
        out = []
        for children in clusters:
            heads = Counter(self.head(child.name) for child in children)
            top = min(heads.items(), key=lambda item: (-item[1], item[0]))[0]
            out.append((f"{top} (general)", "; ".join(child.name for child in children[:3])))
        return out

    def deduplicate(self, level, parents):
        self.calls.append(("deduplicate", level, len(parents)))
        groups: dict[str, list[int]] = {}
        for index, (name, _) in enumerate(parents):
            groups.setdefault(" ".join(stem(w) for w in name.split()), []).append(index)
        return list(groups.values())

    def reassign(self, level, children, candidates, parents):
        self.calls.append(("reassign", level, len(children)))
        self.last_candidates = [list(c) for c in candidates]
        child_vectors = fake_embed([child.name for child in children])
        parent_vectors = fake_embed([name for name, _ in parents])
        choice = []
        for vector, shortlist in zip(child_vectors, candidates):
            similarity = parent_vectors[list(shortlist)] @ vector
            choice.append(int(shortlist[int(np.argmax(similarity))]))
        return choice

    def rename(self, level, parents, children):
        self.calls.append(("rename", level, len(parents)))
        return list(parents)


def test_refiner_protocol_is_wired_per_level():
    tags, _ = hand_made_tags()
    refiner = FakeRefinerLLM()
    assert isinstance(refiner, TreeRefiner) and isinstance(CentralRefiner(), TreeRefiner)
    tree = build_tree(tags, fake_embed(tags), branching=3, top_size=4, refine=refiner, shortlist=4)
    validate_tree(tree)
    steps = [(step, level) for step, level, _ in refiner.calls]
    levels = sorted({level for _, level in steps})
    assert levels == list(range(1, tree.depth))
    for level in levels:
        assert [s for s, lv in steps if lv == level] == ["summarize", "deduplicate", "reassign", "rename"]
    # names come from the refiner; deduplication leaves one parent per stemmed name on each level
    for level in levels:
        names = [tree.names[v] for v in np.flatnonzero(tree.levels == level)]
        assert all(name.endswith(" (general)") for name in names)
        assert len(set(names)) == len(names)
    # the last shortlists had at most 4 candidates, the current parent first, without repeats
    assert all(1 <= len(c) <= 4 and len(set(c)) == len(c) for c in refiner.last_candidates)
    # deterministic: a second build with a fresh fake is identical
    assert_same_tree(tree, build_tree(tags, fake_embed(tags), branching=3, top_size=4, refine=FakeRefinerLLM(), shortlist=4))


def test_refiner_answers_outside_the_contract_are_refused():
    tags, _ = hand_made_tags()

    class OutsideShortlist(CentralRefiner):
        def reassign(self, level, children, candidates, parents):
            return [len(parents) + 5 for _ in children]

    class NotAPartition(CentralRefiner):
        def deduplicate(self, level, parents):
            return [[0, 1]] if len(parents) > 1 else [[0, 0]]

    with pytest.raises(ValueError, match="outside the shortlist"):
        build_tree(tags, fake_embed(tags), branching=3, refine=OutsideShortlist())
    with pytest.raises(ValueError, match="partition"):
        build_tree(tags, fake_embed(tags), branching=3, refine=NotAPartition())


def test_central_refiner_as_explicit_refiner_keeps_the_kmeans_tree():
    names, embeddings, counts = clustered_tags(5, 300)
    plain = build_tree(names, embeddings, counts, branching=5, top_size=5, min_count=1)
    refined = build_tree(names, embeddings, counts, branching=5, top_size=5, min_count=1, refine=CentralRefiner())
    np.testing.assert_array_equal(plain.parents, refined.parents)
    np.testing.assert_array_equal(plain.tag2leaf, refined.tag2leaf)
    assert plain.names == refined.names


def test_concept_carries_centrality_and_count():
    seen = []

    class Spy(CentralRefiner):
        def summarize(self, level, clusters):
            seen.extend(child for cluster in clusters for child in cluster)
            return super().summarize(level, clusters)

    names, embeddings, counts = clustered_tags(6, 100)
    build_tree(names, embeddings, counts, branching=5, top_size=50, min_count=1, refine=Spy())
    leaf_level = [c for c in seen if c.name.startswith("tag ")][:100]
    assert all(isinstance(c, Concept) and -1.0 <= c.centrality <= 1.0 + 1e-6 for c in leaf_level)
    assert sorted(c.count for c in leaf_level) == sorted(counts.astype(float).tolist())


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    n_tags=st.integers(1, 12),
    dim=st.integers(2, 6),
    seed=st.integers(0, 2**16),
    branching=st.sampled_from([2, 3, 10]),
    top_size=st.integers(1, 4),
    identical=st.booleans(),
    counts=st.one_of(st.none(), st.lists(st.integers(0, 4), min_size=12, max_size=12)),
)
def test_small_vocabularies_give_trees_tags_selection_can_use(n_tags, dim, seed, branching, top_size, identical, counts):
    """1, 2, 8 tags, every tag on one leaf (identical vectors), rare tags: always a valid tree whose
    ancestor weights TAGS can build (a one-leaf tree used to raise 'parents contain a cycle')."""
    rng = np.random.default_rng(seed)
    embeddings = np.tile(rng.normal(size=(1, dim)), (n_tags, 1)) if identical else rng.normal(size=(n_tags, dim))
    tag_counts = None if counts is None else np.asarray(counts[:n_tags], dtype=float)
    tree = build_tree([f"tag {i}" for i in range(n_tags)], embeddings, tag_counts, branching=branching, top_size=top_size)
    validate_tree(tree)
    assert sorted(set(tree.tag2leaf.tolist())) == list(range(tree.n_leaves))  # every tag on a leaf, no empty leaf
    omega = ancestor_weights(tree.parents, tree.levels, tree.n_leaves).toarray()
    assert omega.shape == (tree.n_leaves, tree.n_nodes) and (omega[:, tree.root] == 0).all()
    for leaf in range(tree.n_leaves):  # weight 1 on the leaf itself, gamma^(h(v)-1) on each ancestor below the root
        path = tree.ancestors(leaf)[:-1]
        assert np.flatnonzero(omega[leaf]).tolist() == sorted(path.tolist())
        assert np.allclose(omega[leaf, path], 0.5 ** (tree.levels[path] - 1))
    leaf_matrix = np.eye(tree.n_leaves)[np.arange(2 * tree.n_leaves) % tree.n_leaves]
    problem = build_problem(leaf_matrix, np.ones(len(leaf_matrix)), tree.parents, tree.levels)
    assert sorted(select(problem, len(leaf_matrix), TagsParams()).order.tolist()) == list(range(len(leaf_matrix)))
