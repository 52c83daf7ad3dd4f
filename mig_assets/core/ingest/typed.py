"""Typed decoding of the common record shapes: one JSONL line straight to a canonical record.

:func:`canonical_from_json` decodes a line with msgspec into typed structs that hold only the
fields canonicalization reads (turns, provenance, InsTag tags, Deita scores), validating their
types in C and skipping every other field without building it. That is about twice as fast as
parsing the whole record into dicts (``orjson.loads``) and checking each field in Python, which
was most of ingestion's time per row.

It vouches only for what it can prove gives the very same :class:`CanonicalRecord` as
``canonicalize(orjson.loads(line))``; for anything else (another format, a null, an unexpected
type, an invalid value, numbers whose arithmetic could differ) it returns ``None`` and the caller
takes the general path, which names the offending field. It never raises for a record.

Why msgspec: a maintained decoder made for typed, validating JSON decoding; unknown fields are
skipped in C, and a type error is one cheap exception rather than a dict walk.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import UNSET, Struct, UnsetType, field

from mig_assets.core.ingest.records import ROLE_ALIASES, CanonicalRecord, alpaca_messages, deita_mean

# orjson reads an integer outside [-2**63, 2**64) as a float: such an id is skipped there, kept here
ORJSON_INT_RANGE = range(-(2**63), 2**64)
# scores below this (and lists shorter than MAX_SCORE_TURNS) have exact integer products and sums, so
# orjson's ints and msgspec's floats give the same Deita score bit for bit
MAX_EXACT_SCORE = 2**20
MAX_SCORE_TURNS = 4096


class _RoleTurn(Struct):
    role: str
    content: str


class _ShareGptTurn(Struct):
    role: str = field(name="from")
    content: str = field(name="value")


class _Instag(Struct):
    content: list[str] | UnsetType = UNSET


# a score msgspec accepts: a finite float (ints too, as floats; no bools) in [0, MAX_EXACT_SCORE)
Score = Annotated[float, msgspec.Meta(ge=0, lt=MAX_EXACT_SCORE)]


class _Deita(Struct):
    quality_scores: Annotated[list[Score], msgspec.Meta(min_length=1, max_length=MAX_SCORE_TURNS)] | UnsetType = UNSET
    complexity_scores: list[Score] | UnsetType = UNSET


class _Annotation(Struct):
    instag: _Instag | None | UnsetType = UNSET
    deita: _Deita | None | UnsetType = UNSET


class _Record(Struct):
    """The fields ``canonicalize`` reads for the mig, sharegpt, openai and alpaca formats; a field
    of another format marks the record as one the general path takes. A null is allowed where the
    general path reads it as a missing field."""

    dialogs: Annotated[list[_RoleTurn], msgspec.Meta(min_length=1)] | UnsetType = UNSET
    conversations: Annotated[list[_ShareGptTurn], msgspec.Meta(min_length=1)] | UnsetType = UNSET
    messages: Annotated[list[_RoleTurn], msgspec.Meta(min_length=1)] | UnsetType = UNSET
    instruction: str | UnsetType = UNSET
    input: str | None | UnsetType = UNSET
    output: str | None | UnsetType = UNSET
    instances: msgspec.Raw | UnsetType = UNSET
    source: str | list[str] | None | UnsetType = UNSET
    dataset: str | list[str] | None | UnsetType = UNSET
    underscore_id: str | int | None | UnsetType = field(default=UNSET, name="_id")
    id: str | int | None | UnsetType = UNSET
    uid: str | int | None | UnsetType = UNSET
    question_id: str | int | None | UnsetType = UNSET
    idx: str | int | None | UnsetType = UNSET
    annotation: _Annotation | None | UnsetType = UNSET


_DECODER = msgspec.json.Decoder(_Record)


def canonical_from_json(line: bytes) -> CanonicalRecord | None:
    """The canonical record of one JSON object, format detected, or ``None`` where the general path decides."""
    try:
        record = _DECODER.decode(line)
    except (msgspec.DecodeError, RecursionError):  # malformed, another type or too deep: the general path says which
        return None
    if record.dialogs is not UNSET:
        fmt, messages = "mig", _role_turns(record.dialogs)
    elif record.conversations is not UNSET:
        fmt, messages = "sharegpt", _role_turns(record.conversations)
    elif record.messages is not UNSET:
        fmt, messages = "openai", _role_turns(record.messages)
    elif record.instruction is not UNSET:
        fmt, messages = "alpaca", _alpaca(record)
    else:
        return None
    if messages is None:
        return None
    for role, _ in messages:
        if role == "user":  # every content is known non-blank
            break
    else:
        return None
    annotations = _annotations(record.annotation)
    original_id = _original_id(record)
    if annotations is None or original_id is None:
        return None
    tags, quality, deita_turns = annotations
    return CanonicalRecord(messages, fmt, _source(record), original_id, tags, quality, {}, deita_turns)


def _role_turns(turns: list[_RoleTurn] | list[_ShareGptTurn]) -> list[tuple[str, str]] | None:
    """The turns with their roles canonical, or None if one is blank or has an unknown role."""
    alias = ROLE_ALIASES.get
    messages = []
    for turn in turns:
        role = alias(turn.role) or alias(turn.role.strip().lower())
        if role is None or not turn.content.strip():
            return None
        messages.append((role, turn.content))
    return messages


def _alpaca(record: _Record) -> list[tuple[str, str]] | None:
    instruction = record.instruction
    assert isinstance(instruction, str)
    if record.instances is not UNSET or not instruction.strip():  # self-instruct instances: the general path
        return None
    user_input = record.input if isinstance(record.input, str) else ""  # missing or null: no input
    return alpaca_messages(instruction, user_input, record.output if isinstance(record.output, str) else "")


def _annotations(annotation: _Annotation | None | UnsetType) -> tuple[list[str] | None, float | None, tuple[list, list] | None] | None:
    """Imported tags, Deita score and per-turn lists as ``records._annotations`` gives them, or None."""
    if not isinstance(annotation, _Annotation):  # missing or null
        return None, None, None
    instag, deita = annotation.instag, annotation.deita
    tags = instag.content if isinstance(instag, _Instag) and instag.content is not UNSET else None
    if not isinstance(deita, _Deita) or deita.quality_scores is UNSET:
        return tags, None, None
    quality, complexity = deita.quality_scores, deita.complexity_scores
    # msgspec has checked the values (Score) and that quality has some; what deita_score checks besides
    if complexity is UNSET or len(complexity) < len(quality):
        return None
    return tags, deita_mean(quality, complexity), (quality, complexity[: len(quality)])


def _source(record: _Record) -> str:
    for value in (record.source, record.dataset):
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return ",".join(value)
    return ""


def _original_id(record: _Record) -> str | None:
    """The first id field's value as text ("" for none), or None for an int orjson would read as a float."""
    for value in (record.underscore_id, record.id, record.uid, record.question_id, record.idx):
        if value is UNSET or value is None:
            continue
        if isinstance(value, int) and value not in ORJSON_INT_RANGE:
            return None
        return str(value)
    return ""
