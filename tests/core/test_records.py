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


# The valid case takes cheap checks written in C; anything else goes through the checks that name
# the offending value. These cases pin both paths: the same scores, the same fields and messages.
MIG_TURNS = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def with_deita(quality, complexity) -> dict:
    return {"dialogs": MIG_TURNS, "annotation": {"deita": {"quality_scores": quality, "complexity_scores": complexity}}}


class Number(float):
    """A float subclass: valid, but not a type the fast check accepts."""


class Count(int):
    """An int subclass: valid, but not a type the fast check accepts."""


@pytest.mark.parametrize(
    "quality, complexity, expected",
    [
        ([3, 2.5], [1, 2.0, 7], (3 * 1 + 2.5 * 2.0) / 2),  # ints and floats; extra complexity scores ignored
        ([0, 0.0], [0.0, 0], 0.0),
        ([1e16, 1.0, 1.0], [1, 1, 1], ((1e16 * 1 + 1.0 * 1) + 1.0 * 1) / 3),  # left to right: fsum would give 1e16 + 2
        ([1.7976931348623157e308], [1.7976931348623157e308], float("inf")),  # finite scores, an overflowing product
        ([Number(1.5), Count(2)], [Count(3), Number(0.5)], (1.5 * 3 + 2 * 0.5) / 2),  # the full checks accept subclasses
    ],
)
def test_deita_score_of_valid_scores_is_the_mean_product_in_order(quality, complexity, expected):
    score = canonicalize(with_deita(quality, complexity)).imported_quality
    assert type(score) is float and score == expected


@pytest.mark.parametrize(
    "quality, complexity, field, reason",
    [
        ([], [1.0], "quality_scores", "expected a non-empty list of numbers"),
        ("4.0", [1.0], "quality_scores", "expected a non-empty list of numbers"),
        ((4.0,), [1.0], "quality_scores", "expected a non-empty list of numbers"),
        ([4.0], None, "complexity_scores", "expected a non-empty list of numbers"),
        ([4.0], [], "complexity_scores", "expected a non-empty list of numbers"),
        ([1.0, True], [1.0, 1.0], "quality_scores[1]", "expected a finite non-negative number, got True"),
        ([1.0, "2"], [1.0, 1.0], "quality_scores[1]", "expected a finite non-negative number, got '2'"),
        ([1.0, None], [1.0, 1.0], "quality_scores[1]", "expected a finite non-negative number, got None"),
        ([float("nan")], [1.0], "quality_scores[0]", "expected a finite non-negative number, got nan"),
        ([1.0, float("nan")], [1.0, 1.0], "quality_scores[1]", "expected a finite non-negative number, got nan"),
        ([float("inf")], [1.0], "quality_scores[0]", "expected a finite non-negative number, got inf"),
        ([1.0], [2.0, float("-inf")], "complexity_scores[1]", "expected a finite non-negative number, got -inf"),
        ([1.0, -0.5], [1.0, 1.0], "quality_scores[1]", "expected a finite non-negative number, got -0.5"),
        ([1.0, -1], [-2, 1.0], "quality_scores[1]", "expected a finite non-negative number, got -1"),  # quality first
        ([1.0], [1.0, False], "complexity_scores[1]", "expected a finite non-negative number, got False"),
        # an int float64 cannot hold exactly: quarantined, where storing it used to fail the whole shard
        ([2**60], [1.0], "quality_scores[0]", f"integer {2**60} is beyond 2**53, the largest a float64 score holds exactly"),
        ([1.0], [-(10**400)], "complexity_scores[0]", f"integer {-(10**400)} is beyond 2**53, the largest a float64 score holds exactly"),
        ([1.0, 2.0], [1.0], "complexity_scores", "has 1 scores for 2 quality scores"),
    ],
)
def test_bad_deita_scores_name_the_first_offending_value(quality, complexity, field, reason):
    with pytest.raises(RecordError) as err:
        canonicalize(with_deita(quality, complexity))
    assert (err.value.field, err.value.reason) == (f"annotation.deita.{field}", reason)
    with pytest.raises(RecordError) as direct:
        deita_score(quality, complexity)
    assert str(direct.value) == str(err.value)


class Tag(str):
    """A str subclass: a valid tag, but not a type the fast check accepts."""


@pytest.mark.parametrize(
    "content, tags",
    [(["math", "logic"], ["math", "logic"]), ([], []), ([Tag("math")], ["math"])],
)
def test_imported_tags_lists_of_strings_are_kept(content, tags):
    record = {"dialogs": MIG_TURNS, "annotation": {"instag": {"content": content}}}
    assert canonicalize(record).imported_tags == tags


@pytest.mark.parametrize("content", ["math", ("math",), ["math", 1], ["math", None], [b"math"], None])
def test_imported_tags_that_are_not_a_list_of_strings_are_rejected(content):
    record = {"dialogs": MIG_TURNS, "annotation": {"instag": {"content": content}}}
    with pytest.raises(RecordError) as err:
        canonicalize(record)
    assert (err.value.field, err.value.reason) == ("annotation.instag.content", "expected a list of strings")


@pytest.mark.parametrize(
    "fields, source",
    [
        ({"source": "tulu"}, "tulu"),
        ({"source": ["tulu", "sharegpt"]}, "tulu,sharegpt"),
        ({"source": [Tag("tulu")]}, "tulu"),
        ({"source": []}, ""),
        ({"source": ["tulu", 1], "dataset": "d"}, "d"),  # not all strings: the next key is read
        ({"source": None, "dataset": ["d1", "d2"]}, "d1,d2"),
        ({"source": 3, "dataset": ["d", 2]}, ""),
        ({}, ""),
    ],
)
def test_source_is_the_first_string_or_list_of_strings(fields, source):
    assert canonicalize({"dialogs": MIG_TURNS, **fields}).source == source


@pytest.mark.parametrize(
    "fields, original_id",
    [
        ({"_id": "s1", "id": 2}, "s1"),
        ({"_id": None, "id": 7}, "7"),
        ({"id": True, "uid": "u"}, "u"),  # a boolean is not an id
        ({"id": 2.5, "idx": 9}, "9"),
        ({"question_id": Count(4)}, "4"),
        ({}, ""),
    ],
)
def test_original_id_is_the_first_string_or_integer_id_field(fields, original_id):
    assert canonicalize({"dialogs": MIG_TURNS, **fields}).original_id == original_id


@pytest.mark.parametrize(
    "record, field",
    [
        ({"dialogs": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}, "dialogs"),
        ({"conversations": [{"from": "gpt", "value": "a"}]}, "conversations"),
        ({"turns": [{"role": "assistant", "content": "a"}]}, "(record)"),
    ],
)
def test_a_conversation_without_a_user_turn_names_its_turn_list(record, field):
    with pytest.raises(RecordError) as err:
        canonicalize(record)
    assert (err.value.field, err.value.reason) == (field, "conversation has no non-empty user turn")


def test_an_unknown_format_override_is_a_config_error():
    with pytest.raises(RecordError) as err:
        canonicalize({"prompt": "p"}, "csv")
    assert err.value.field == "(config)"
    assert err.value.reason == "unknown format 'csv'; expected auto or one of mig, sharegpt, openai, alpaca, turns, prompt"


def test_sample_id_hashes_the_sorted_key_compact_json_of_the_normalized_turns():
    import hashlib

    canonical = canonicalize({"conversations": [{"from": "human", "value": " Q\r\n"}, {"from": "gpt", "value": "caf\u0065\u0301 "}]})
    expected = '[{"content":"Q","role":"user"},{"content":"caf\u00e9","role":"assistant"}]'.encode()
    assert canonical.sample_id == hashlib.sha256(expected).hexdigest()


def test_n_chars_counts_the_code_points_of_the_turns_as_read():
    """Counted over the stored contents (Arrow's utf8_length), as len() counts them."""
    import math

    from mig_assets.core.ingest.columns import SampleColumns
    from mig_assets.core.ingest.readers import RawRecord
    from mig_assets.core.ingest.shards import ShardContext
    from mig_assets.core.tokens import CHARS_PER_TOKEN

    records = [
        canonicalize({"conversations": [{"from": "human", "value": " Q\r\n"}, {"from": "gpt", "value": "caf\u0065\u0301 "}]}),
        canonicalize({"instruction": "\U0001f600 emoji", "input": "x" * 9}),
        canonicalize({"dialogs": [{"role": "user", "content": "a"}]}),
    ]
    columns = SampleColumns()
    for line_no, record in enumerate(records, start=1):
        columns.add(RawRecord(line_no, "{}"), record)
    table = columns.table(ShardContext("s", "s.jsonl", "run", "auto", 1 << 20))
    expected = [len(" Q\r\n") + len("caf\u0065\u0301 "), len("\U0001f600 emoji\n\n" + "x" * 9), 1]
    assert table.column("n_chars").to_pylist() == expected == [sum(len(c) for _, c in r.messages) for r in records]
    assert table.column("n_tokens_est").to_pylist() == [math.ceil(n / CHARS_PER_TOKEN) for n in expected]
