"""The parsing contract under fault injection: every answer ends ok, repaired or failed."""

import json

import pytest

from mig_assets.core.tagging.prompts import PROMPTS, parse_tag_output


@pytest.mark.parametrize(
    "text, status, tags",
    [
        ('{"tags": ["python", "binary search"]}', "ok", ["python", "binary search"]),
        ('[{"tag": "Calculus", "explanation": "x"}]', "ok", ["calculus"]),
        ('```json\n{"tags": ["Sorting Algorithms"]}\n```', "repaired", ["sorting algorithm"]),
        ('<think>let me think</think>\n{"tags": ["graph theory"]}', "repaired", ["graph theory"]),
        ('<think>never closed... {"tags": ["x"]}', "failed", []),
        ('{"tags": ["chain rule", "derivati', "repaired", ["chain rule"]),
        ('{"tags": ["a, b", "c]d", "tru', "repaired", ["a, b", "c]d"]),
        ('Sure! Here you go: {"tags": ["unit conversion"]} Hope it helps.', "repaired", ["unit conversion"]),
        ('{"tags": ["python", 3, null]}', "repaired", ["python"]),
        ("", "failed", []),
        (None, "failed", []),
        ("I cannot help with that.", "failed", []),
        ('{"labels": ["x"]}', "failed", []),
        ('{"tags": ["user intention", "question answering", "..."]}', "failed", []),
        ("\x00\x01garbage{{{", "failed", []),
    ],
)
def test_parse_contract(text, status, tags):
    parsed = parse_tag_output(text)
    assert parsed.status == status
    assert parsed.tags == tags
    assert (parsed.reason != "") == (status != "ok")


def test_prompts_carry_a_fingerprint_and_a_schema_that_accepts_their_example():
    for prompt in PROMPTS.values():
        assert len(prompt.fingerprint) == 12
        messages = prompt.messages("What is 2+2?")
        assert messages[-1]["role"] == "user" and "What is 2+2?" in messages[-1]["content"]
    assert PROMPTS["atomic-v1"].fingerprint != PROMPTS["instag-v1"].fingerprint


def test_schema_valid_answers_parse_ok():
    jsonschema = pytest.importorskip("jsonschema")
    answer = {"tags": ["python programming", "recursion"]}
    jsonschema.validate(answer, PROMPTS["atomic-v1"].schema)
    assert parse_tag_output(json.dumps(answer)).status == "ok"
