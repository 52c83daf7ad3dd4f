"""Typed decoding (core/ingest/typed.py) gives exactly the general path's canonical record, or declines.

The property: for any line, ``canonical_from_json(line)`` is either None (the general path decides)
or the very record ``canonicalize(orjson.loads(line))`` gives, floats bit for bit. The common
records must not be declined, or the fast path would be dead code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mig_assets.core.ingest import readers
from mig_assets.core.ingest.records import CanonicalRecord, RecordError, canonicalize
from mig_assets.core.ingest.shards import ShardContext, read_part
from mig_assets.core.ingest.typed import MAX_EXACT_SCORE, canonical_from_json

REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
DIALOG = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def general(line: bytes) -> CanonicalRecord | None:
    """The general path's record, or None where it quarantines the line."""
    try:
        return canonicalize(orjson.loads(line))
    except (orjson.JSONDecodeError, RecordError):
        return None


def fields(record: CanonicalRecord) -> tuple:
    """Everything ingestion stores of a record, floats as their exact bits."""

    def exact(values):
        return None if values is None else [float(v).hex() for v in values]

    turns = record.deita_turns
    quality = None if record.imported_quality is None else record.imported_quality.hex()
    return (
        record.messages,
        record.source_format,
        record.source,
        record.original_id,
        record.imported_tags,
        quality,
        record.extra,
        None if turns is None else (exact(turns[0]), exact(turns[1])),
        record.sample_id,
    )


def dumps(value) -> bytes:
    """A JSONL line (json: unlike orjson it writes ints of any size, as files may hold them)."""
    return json.dumps(value, ensure_ascii=False).encode()


def assert_agrees(line: bytes) -> CanonicalRecord | None:
    typed = canonical_from_json(line)
    if typed is not None:
        expected = general(line)
        assert expected is not None, f"typed decoding kept a line the general path quarantines: {line!r}"
        assert fields(typed) == fields(expected), line
    return typed


COMMON = [
    {"dialogs": DIALOG, "source": ["synthetic"], "_id": "s1", "annotation": {"instag": {"content": ["a", "b"], "versions": [1, 1]}, "dialog_round": 1}},
    {"dialogs": DIALOG, "annotation": {"deita": {"quality_scores": [4.31, 1.97], "complexity_scores": [1.41, 3.84, 9.0]}}},
    {"dialogs": DIALOG, "annotation": {"deita": {"quality_scores": [4, 2], "complexity_scores": [3, 5]}}},  # ints
    {"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], "id": 7},
    {"messages": [{"role": " User ", "content": "hi\r\n"}, {"role": "ASSISTANT", "content": "x  \n y"}], "dataset": "d"},
    {"instruction": "Add", "input": "2 and 3", "output": "5", "source": ["a", "b"]},
    {"instruction": "Say hi", "input": " ", "output": ""},
    {"instruction": "Say hi", "turns": ["ignored"], "prompt": "ignored"},  # instruction comes first
    {"dialogs": [{"role": "human", "content": "é\u0301"}], "uid": -(2**63)},
    {"dialogs": DIALOG, "_id": 2**64 - 1, "idx": "later"},
    # a null the general path reads as a missing field
    {"dialogs": DIALOG, "source": None, "dataset": "d", "_id": None, "id": 3, "annotation": {"instag": None, "deita": None}},
    {"instruction": "Add", "input": None, "output": None, "annotation": None},
]

DECLINED = [
    {"dialogs": None},
    {"dialogs": []},
    {"dialogs": [{"role": "user", "content": " "}]},
    {"dialogs": [{"role": "robot", "content": "hi"}]},
    {"dialogs": [{"role": "assistant", "content": "no user"}]},
    {"dialogs": [{"role": "user"}]},
    {"dialogs": DIALOG, "annotation": "not an object"},
    {"dialogs": DIALOG, "annotation": {"instag": {"content": None}}},
    {"dialogs": DIALOG, "annotation": {"instag": {"content": ["a", 1]}}},
    {"dialogs": DIALOG, "annotation": {"deita": {"quality_scores": [4.0]}}},
    {"dialogs": DIALOG, "annotation": {"deita": {"quality_scores": [4.0, 1.0], "complexity_scores": [1.0]}}},
    {"dialogs": DIALOG, "annotation": {"deita": {"quality_scores": [True], "complexity_scores": [1.0]}}},
    {"dialogs": DIALOG, "annotation": {"deita": {"quality_scores": [-1.0], "complexity_scores": [1.0]}}},
    {"dialogs": DIALOG, "annotation": {"deita": {"quality_scores": [], "complexity_scores": [1.0]}}},
    {"dialogs": DIALOG, "annotation": {"deita": {"quality_scores": [2**60], "complexity_scores": [2**60]}}},
    {"dialogs": DIALOG, "_id": 2**64},  # orjson reads it as a float: the id is skipped there
    {"dialogs": DIALOG, "_id": 1.5, "id": "x"},
    {"dialogs": DIALOG, "_id": True},
    {"dialogs": DIALOG, "source": 3, "dataset": "d"},
    {"dialogs": DIALOG, "source": ["a", 1]},
    {"dialogs": DIALOG, "input": 5},  # a field of another format, of another type
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "parts"}]}]},
    {"instruction": "Classify", "instances": [{"input": "x", "output": "y"}]},
    {"instruction": " "},
    {"turns": ["first"]},
    {"prompt": "Write"},
    {"other": 1},
]


@pytest.mark.parametrize("record", COMMON)
def test_the_common_records_are_decoded_typed_and_agree(record):
    assert assert_agrees(dumps(record)) is not None


@pytest.mark.parametrize("record", DECLINED)
def test_records_it_cannot_vouch_for_go_to_the_general_path(record):
    assert canonical_from_json(dumps(record)) is None


@pytest.mark.parametrize(
    "line",
    [
        b'{"dialogs": [{"role": "user", "content": "\\ud800"}]}',  # a lone surrogate: orjson rejects it
        b'{"dialogs": [{"role": "user", "content": "x"}], "z": ' + b"[" * 2000 + b"]" * 2000 + b"}",
        b'{"dialogs": [{"role": "user", "content": "x"}]} trailing',
        b'{"dialogs": [{"role": "user", "content": "x"}], "z": NaN}',
        b'{"dialogs": [{"role": "user", "content": "x"}], "annotation": {"deita": {"quality_scores": [1e400], "complexity_scores": [1]}}}',
        b"[1, 2]",
    ],
)
def test_lines_the_general_path_rejects_are_never_kept(line):
    assert canonical_from_json(line) is None


def test_duplicate_and_escaped_keys_read_as_orjson_reads_them():
    assert assert_agrees(b'{"dialog\\u0073": [{"role": "user", "content": "a"}], "_id": "1", "_id": "2"}') is not None
    assert canonical_from_json(b'{"dialogs": [{"role": "user", "content": "a"}], "_id": "1", "_id": "2"}').original_id == "2"


# mostly valid values, with the odd one of every kind the general path treats apart
text = st.sampled_from(["hi", "x\r\n", "é", "  a  ", "user", " ", ""])
role = st.sampled_from(["user", "user", "assistant", "human", "gpt", " User ", "system", "robot", ""])
scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False), text)
odd = st.one_of(scalar, st.lists(scalar, max_size=2), st.dictionaries(text, scalar, max_size=2))


def sometimes(valid, n_valid: int = 4):
    """``valid`` n_valid times in n_valid + 1, else any odd value (one_of would merge repeated branches)."""
    return st.integers(0, n_valid).flatmap(lambda k: valid if k else odd)


def turns(role_key: str, content_key: str):
    turn = st.fixed_dictionaries({role_key: sometimes(role), content_key: sometimes(text)}, optional={"weight": scalar})
    return st.lists(sometimes(turn, 8), min_size=1, max_size=3)


score = st.one_of(st.floats(0, 10), st.integers(0, 10), st.floats(0, 10), st.just(MAX_EXACT_SCORE), st.just(2**60), scalar)
deita = st.fixed_dictionaries({"quality_scores": sometimes(st.lists(score, max_size=3))}, optional={"complexity_scores": st.lists(score, max_size=4)})
instag = st.fixed_dictionaries({}, optional={"content": sometimes(st.lists(sometimes(text, 8), max_size=3)), "versions": odd})
annotation = sometimes(st.fixed_dictionaries({}, optional={"instag": sometimes(instag), "deita": sometimes(deita), "dialog_round": scalar}))
identifier = sometimes(st.one_of(text, st.integers(-(2**65), 2**65)))
provenance = {
    "source": sometimes(st.one_of(text, st.lists(sometimes(text, 8), max_size=2))),
    "dataset": sometimes(text),
    "_id": identifier,
    "id": identifier,
    "uid": identifier,
    "idx": identifier,
    "annotation": annotation,
    "turns": odd,
    "prompt": odd,
}
record = st.one_of(
    st.fixed_dictionaries({"dialogs": sometimes(turns("role", "content"))}, optional=provenance),
    st.fixed_dictionaries({"conversations": sometimes(turns("from", "value"))}, optional=provenance),
    st.fixed_dictionaries({"messages": sometimes(turns("role", "content"))}, optional={**provenance, "dialogs": odd}),
    st.fixed_dictionaries({"instruction": sometimes(text)}, optional={**provenance, "input": sometimes(text), "output": sometimes(text), "instances": odd}),
    st.fixed_dictionaries({}, optional={**provenance, "dialogs": odd, "conversations": odd, "messages": odd, "instruction": odd}),
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record)
def test_typed_decoding_agrees_with_the_general_path_on_any_record(value):
    assert_agrees(dumps(value))


def arrow_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_a_shard_reads_byte_for_byte_the_same_with_and_without_typed_decoding(tmp_path, monkeypatch):
    lines = [dumps(r) for r in COMMON + DECLINED] + [b"not json", b"", b'{"dialogs": [{"role": "user", "content": "\\ud800"}]}']
    for real in sorted(REAL_DATA.glob("*.jsonl")):
        lines += real.read_bytes().splitlines()[:200]
    shard = tmp_path / "shard.jsonl"
    shard.write_bytes(b"\n".join(lines) + b"\n")
    context = ShardContext("s", "incoming/shard.jsonl", "run", "auto", 1 << 20)

    typed = read_part(shard, None, context)
    monkeypatch.setattr(readers, "canonical_from_json", lambda line: None)
    untyped = read_part(shard, None, context)

    assert typed.samples.num_rows > len(COMMON) and typed.quarantine.num_rows > len(DECLINED) / 2
    for a, b in ((typed.samples, untyped.samples), (typed.quarantine, untyped.quarantine)):
        assert hashlib.sha256(arrow_bytes(a)).hexdigest() == hashlib.sha256(arrow_bytes(b)).hexdigest()
    assert (typed.rows_read, typed.formats, typed.reasons) == (untyped.rows_read, untyped.formats, untyped.reasons)
