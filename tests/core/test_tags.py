"""Tag normalization, the per-source policies and the LLM junk filter (mig_assets.core.tagging.canonical)."""

import json
from pathlib import Path

import pytest

from mig_assets.core.tagging.canonical import (
    as_written_tags,
    canonical_for_policy,
    filter_llm_tags,
    normalize_tag,
    policy_of_backend,
)
from tests.conftest import MIG_FIXTURES

TABLE = Path(__file__).resolve().parents[1] / "data" / "tag_normalization.tsv"


def regression_table() -> list[tuple[str, str]]:
    lines = TABLE.read_text(encoding="utf-8").splitlines()[1:]
    return [tuple(line.split("\t")) for line in lines if line]


def outcome(surface: str) -> str:
    filtered = filter_llm_tags([surface])
    return filtered.tags[0] if filtered.tags else f"DROPPED: {filtered.dropped[0]['reason']}"


def test_regression_table_of_real_tags():
    table = regression_table()
    valid = set(json.loads((MIG_FIXTURES / "valid_tags.json").read_text()))
    assert len(table) >= 150 and sum(surface in valid for surface, _ in table) >= 150
    wrong = [(surface, expected, outcome(surface)) for surface, expected in table if outcome(surface) != expected]
    assert not wrong, wrong


@pytest.mark.parametrize(
    "surface, canonical",
    [
        ("c#", "c#"),
        ("news", "news"),
        ("fake news", "fake news"),
        ("kubernetes", "kubernetes"),
        ("macos", "macos"),
        ("devops", "devops"),
        ("node.js", "node.js"),
        ("vue.js", "vue.js"),
        ("next.js", "next.js"),
        ("express.js", "express.js"),
        ("taylor series", "taylor series"),
        ("fourier series", "fourier series"),
        ("game of thrones", "game of thrones"),
    ],
)
def test_the_tags_the_old_singularizer_corrupted_keep_their_meaning(surface, canonical):
    assert normalize_tag(surface) == canonical


def test_normalization_is_idempotent_on_the_valid_tag_list():
    valid = json.loads((MIG_FIXTURES / "valid_tags.json").read_text())
    canonical = [c for c in map(normalize_tag, valid) if c is not None]
    assert [normalize_tag(c) for c in canonical] == canonical


def test_as_written_policy_keeps_every_valid_tag_and_its_repeats():
    valid = json.loads((MIG_FIXTURES / "valid_tags.json").read_text())
    assert as_written_tags(valid) == valid  # "information", "text", "task": none is dropped as generic
    assert as_written_tags(["Task", "task", 3, "Task"]) == ["Task", "task", "Task"]
    assert [canonical_for_policy(t, "as_written") for t in ("information", "C#")] == ["information", "C#"]
    assert policy_of_backend("imported") == "as_written" and policy_of_backend("vllm") == "normalized"
    with pytest.raises(ValueError, match="unknown tag policy"):
        canonical_for_policy("x", "stemmed")


def test_junk_filter_keeps_each_surface_form_with_its_reason():
    prompt = "Write a short story about a lighthouse keeper who finds a message in a bottle."
    surface = [
        "the",
        "to",
        "lighthouse lighthouse",
        "debt relief debt relief debt relief debt",
        "json safe finally finally",
        "list1",
        "123",
        "Here are the tags",
        "write a short story about a lighthouse keeper",
        "Creative Writing",
        "creative writing",
        "Lighthouse Keepers",
        "short story",
        "storytelling",
    ]
    result = filter_llm_tags(surface, prompt, max_tags=3)
    assert result.tags == ["creative writing", "lighthouse keeper", "short story"]
    reasons = {d["surface"]: d["reason"] for d in result.dropped}
    assert reasons == {
        "the": "stop words only",
        "to": "stop words only",
        "lighthouse lighthouse": "repeated words",
        "debt relief debt relief debt relief debt": "repeated words",
        "json safe finally finally": "repeated words",
        "list1": "numbered placeholder",
        "123": "numeric only",
        "Here are the tags": "model boilerplate",
        "write a short story about a lighthouse keeper": "copied from the prompt",
        "storytelling": "over the cap of 3 tags",
    }
    # every surface form is accounted for: one of the 4 kept ones (two merge) or dropped with a reason
    assert len(result.dropped) == len(surface) - 4


def test_a_long_tag_absent_from_the_prompt_is_not_taken_for_a_copy():
    result = filter_llm_tags(["history of the roman empire"], "Who was the first emperor of Rome?")
    assert result.tags == ["history of the roman empire"] and not result.dropped
