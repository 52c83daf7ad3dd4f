"""Format adapters, validation errors (with field paths) and content-addressed identity."""

import pytest

from mig_assets.core.ingest.records import (
    RecordError,
    canonicalize,
    deita_score,
    detect_format,
    sample_id,
)


@pytest.mark.parametrize(
    "record, fmt, messages",
    [
        (
            {"dialogs": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            "mig",
            [("user", "hi"), ("assistant", "hello")],
        ),
        (
            {"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
            "sharegpt",
            [("system", "be brief"), ("user", "hi"), ("assistant", "yo")],
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]},
            "openai",
            [("user", "a\nb")],
        ),
        ({"instruction": "Add", "input": "2 and 3", "output": "5"}, "alpaca", [("user", "Add\n\n2 and 3"), ("assistant", "5")]),
        ({"instruction": "Say hi", "input": "", "output": ""}, "alpaca", [("user", "Say hi")]),
        (
            {"instruction": "Classify", "instances": [{"input": "x", "output": "y"}, {"input": "z", "output": "w"}]},
            "alpaca",
            [("user", "Classify\n\nx"), ("assistant", "y")],
        ),
        ({"question_id": 1, "turns": ["first", "follow-up"]}, "turns", [("user", "first"), ("user", "follow-up")]),
        ({"uid": "u", "prompt": "Write a poem"}, "prompt", [("user", "Write a poem")]),
        ({"question": "Why?", "answer": "Because."}, "prompt", [("user", "Why?"), ("assistant", "Because.")]),
    ],
)
def test_each_format_becomes_canonical_messages(record, fmt, messages):
    canonical = canonicalize(record)
    assert canonical.source_format == fmt
    assert canonical.messages == messages
    assert canonical.n_chars == sum(len(c) for _, c in messages)


def test_format_override_reads_the_named_fields_only():
    record = {"prompt": "p", "instruction": "i"}
    assert detect_format(record) == "alpaca"
    assert canonicalize(record, "prompt").messages == [("user", "p")]
    with pytest.raises(RecordError) as err:
        canonicalize({"prompt": "p"}, "sharegpt")
    assert err.value.field == "conversations"


@pytest.mark.parametrize(
    "record, field, reason",
    [
        ({"messages": [{"role": "user"}]}, "messages[0].content", "missing content"),
        ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content", "must be a string"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content", "must be a string"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "narrator", "value": "x"}]}, "conversations[1].from", "unknown role 'narrator'"),
        ({"conversations": []}, "conversations", "empty conversation"),
        ({"dialogs": "not a list"}, "dialogs", "expected a list"),
        ({"messages": [{"role": "assistant", "content": "only an answer"}]}, "messages", "no non-empty user turn"),
        ({"messages": [{"role": "user", "content": "   "}]}, "messages[0].content", "empty content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}, "messages[0].content[0]", "only text"),
        ({"instruction": 3}, "instruction", "must be a string"),
        ({"turns": ["ok", 5]}, "turns[1]", "expected a string"),
        ({"foo": 1, "bar": 2}, "(record)", "fields present: bar, foo"),
        (["a", "list"], "(record)", "expected a JSON object"),
        (
            {"dialogs": [{"role": "user", "content": "q"}], "annotation": {"instag": {"content": "tag"}}},
            "annotation.instag.content",
            "list of strings",
        ),
        (
            {"dialogs": [{"role": "user", "content": "q"}], "annotation": {"deita": {"quality_scores": [], "complexity_scores": []}}},
            "annotation.deita.quality_scores",
            "non-empty list",
        ),
    ],
)
def test_bad_records_name_the_field_and_reason(record, field, reason):
    with pytest.raises(RecordError) as err:
        canonicalize(record)
    assert err.value.field == field
    assert reason in err.value.reason


def test_imported_annotations_are_kept():
    record = {
        "_id": "abc",
        "source": ["tulu"],
        "dialogs": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "annotation": {"instag": {"content": ["math", "logic"]}, "deita": {"quality_scores": [3.0, 4.0], "complexity_scores": [2.0, 0.5, 9.0]}},
    }
    canonical = canonicalize(record)
    assert canonical.imported_tags == ["math", "logic"]
    assert canonical.imported_quality == pytest.approx((3.0 * 2.0 + 4.0 * 0.5) / 2)
    assert canonical.original_id == "abc" and canonical.source == "tulu"


def test_deita_score_rejects_short_complexity_and_negative_values():
    with pytest.raises(RecordError, match="has 1 scores for 2"):
        deita_score([1.0, 2.0], [1.0])
    with pytest.raises(RecordError) as err:
        deita_score([1.0, -2.0], [1.0, 1.0])
    assert err.value.field == "annotation.deita.quality_scores[1]"


def test_sample_id_ignores_line_endings_and_edge_whitespace_but_not_indentation():
    base = sample_id([("user", "def f():\n    return 1")])
    assert sample_id([("user", "  def f():\r\n    return 1  \n")]) == base
    assert sample_id([("user", "def f():\n  return 1")]) != base
    assert sample_id([("assistant", "def f():\n    return 1")]) != base
    # the same content in any format gets the same id
    sharegpt = canonicalize({"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]})
    alpaca = canonicalize({"instruction": "Q", "output": "A"})
    assert sharegpt.sample_id == alpaca.sample_id
