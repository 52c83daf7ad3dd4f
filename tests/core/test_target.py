"""Target sets: reading with a filter, grounding on the tree by tags and by text; the LLM tree refiner."""

import json

import numpy as np
import pytest

from mig_assets.core.llm.backends import truncate_by_chars
from mig_assets.core.tags.build import build_tree
from mig_assets.core.tags.refine import LLMTreeRefiner
from mig_assets.core.tags.target import ground_target, read_target
from tests.conftest import REAL_DATA


def test_mt_bench_coding_and_math_are_read_with_both_turns():
    read = read_target(REAL_DATA / "mt_bench_questions.jsonl", "category", ["coding", "math"])
    assert len(read.samples) == 20 and read.filtered_out == 60 and not read.bad
    first = json.loads(next(l for l in (REAL_DATA / "mt_bench_questions.jsonl").read_text().splitlines() if '"math"' in l))
    [sample] = [s for s in read.samples if s.line_no == first["question_id"] - 80]
    assert first["turns"][0] in sample.text and first["turns"][1] in sample.text


def test_bad_target_records_are_reported_with_file_line_and_field(tmp_path):
    path = tmp_path / "target.jsonl"
    rows = [
        json.dumps({"category": "math", "prompt": "What is 2 + 2?"}),
        '{"category": "math", "prompt": "broken',
        json.dumps({"prompt": "no category here"}),
        json.dumps({"category": "math", "turns": []}),
        json.dumps({"category": "writing", "prompt": "a poem"}),
        json.dumps({"category": "math", "prompt": "What is 2 + 2?"}),
    ]
    path.write_text("\n".join(rows) + "\n")
    read = read_target(path, "category", ["math"])
    assert len(read.samples) == 1 and read.filtered_out == 1 and read.duplicates == 1
    assert read.rows_read == len(read.samples) + read.filtered_out + read.duplicates + len(read.bad) == 6
    assert read.bad[0].startswith(f"{path}:2:") and f"{path}:3: category: missing" in read.bad[1]
    assert read.bad[2].startswith(f"{path}:4: turns")


def test_missing_target_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_target(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="holds no"):
        read_target(tmp_path)


def _axis_tree():
    """Four tags on two well separated axes: two leaves."""
    tags = ["algebra", "equations", "poetry", "rhymes"]
    vectors = np.array([[1, 0.1, 0], [1, -0.1, 0], [0, 0.1, 1], [0, -0.1, 1]], dtype=np.float32)
    return build_tree(tags, vectors, branching=2, top_size=1, leaf_branching=2)


def test_target_mass_splits_over_tags_and_falls_back_to_text():
    tree = _axis_tree()
    math_leaf, poem_leaf = tree.leaf_of(["algebra", "poetry"])
    embed = {"geometry": [0.9, 0, 0.1], "knitting": [0, 1, 0]}
    text_vectors = np.array([[0, 0, 0], [0, 0, 0], [0.1, 0, 1], [0, 1, 0]], dtype=np.float32)
    grounding = ground_target(
        tree,
        [["algebra", "poetry"], ["geometry", "knitting"], None, []],
        embed_tags=lambda names: np.array([embed[n] for n in names], dtype=np.float32),
        text_vectors=text_vectors,
    )
    # sample 0: half to each leaf; sample 1: geometry (unseen) joins math, knitting is unassigned;
    # sample 2: no tags, its text is near the poems; sample 3: text far from every leaf
    assert grounding.methods == ["tags", "tags", "text", "unassigned"]
    expected = np.zeros(tree.n_leaves)
    expected[math_leaf] += 0.5 + 1.0
    expected[poem_leaf] += 0.5 + 1.0
    np.testing.assert_allclose(grounding.leaf_counts, expected)
    assert grounding.tag_counts == {"known": 2, "nearest": 1, "unassigned": 1}


def test_unseen_tags_without_an_embedder_stay_unassigned():
    grounding = ground_target(_axis_tree(), [["geometry"], ["algebra"]])
    assert grounding.methods == ["unassigned", "tags"] and grounding.leaf_counts.sum() == 1.0


class NamingBackend:
    """Fake LLM for the refiner: names a cluster after its first listed child (upper-cased),
    picks the last option of a shortlist, and answers garbage to prompts mentioning 'rhymes'."""

    model_id = "fake-refiner"

    def __init__(self):
        self.prompts = 0

    def complete(self, conversations, schema, sampling):
        answers = []
        for messages in conversations:
            self.prompts += 1
            text = messages[-1]["content"]
            if "choice" in schema["properties"]:
                answers.append(json.dumps({"choice": len(schema["properties"]["choice"]["enum"])}))
            elif "rhymes" in text:
                answers.append("not json")
            else:
                first = text.split(": ", 1)[1].split(";")[0].split(".")[0]
                answers.append(json.dumps({"name": f"Topic {first}", "description": "d"}))
        return answers

    def truncate(self, text, max_tokens):
        return truncate_by_chars(text, max_tokens)


def test_llm_refiner_names_reassigns_within_the_shortlist_and_caches(tmp_path):
    tags = ["algebra", "equations", "poetry", "rhymes", "sonnets", "calculus"]
    vectors = np.array([[1, 0.1, 0], [1, -0.1, 0], [0, 0.1, 1], [0, -0.1, 1], [0, 0, 1], [1, 0, 0.05]], dtype=np.float32)
    backend = NamingBackend()
    refiner = LLMTreeRefiner(backend, cache_path=tmp_path / "cache.jsonl")
    tree = build_tree(tags, vectors, branching=2, top_size=1, leaf_branching=3, refine=refiner, shortlist=2)
    assert refiner.asked == backend.prompts > 0
    assert any(name.startswith("topic ") for name in tree.names[: tree.n_leaves])  # LLM names, canonicalised
    assert refiner.fallbacks >= 1  # the garbage answer kept the central child's name instead
    again = LLMTreeRefiner(backend, cache_path=tmp_path / "cache.jsonl")
    rebuilt = build_tree(tags, vectors, branching=2, top_size=1, leaf_branching=3, refine=again, shortlist=2)
    assert again.asked == 0 and rebuilt.names == tree.names and (rebuilt.tag2leaf == tree.tag2leaf).all()
