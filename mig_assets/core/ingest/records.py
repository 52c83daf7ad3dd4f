"""Canonical instruction records: format detection, validation and content-addressed identity.

One input record (a JSONL line, a JSON array element or a Parquet row) becomes one canonical
sample: a list of ``(role, content)`` turns plus provenance and any imported annotations. A record
that cannot be read raises :class:`RecordError` naming the offending field, so the caller can
quarantine it with a reason instead of dropping it.

Plain Python: no Dagster import, so it can be read, tested and benchmarked alone.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from dataclasses import dataclass, field
from operator import mul
from typing import Any, Callable, cast

import orjson

ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "tool": "tool",
    "function": "tool",
    "ipython": "tool",
}
FORMATS = ("mig", "sharegpt", "openai", "alpaca", "turns", "prompt")
ID_FIELDS = ("_id", "id", "uid", "question_id", "idx")
PROMPT_FIELDS = ("prompt", "question")
RESPONSE_FIELDS = ("response", "answer", "output", "completion")
# the exact types orjson and Arrow give numbers and strings: a cheap sufficient check for valid
# values; anything else goes through the checks that name the offending value
NUMBER_TYPES = frozenset((float, int))
MAX_EXACT_INT = 2**53  # scores are stored as float64, which holds every integer up to this exactly
STRING_TYPES = frozenset((str,))


class RecordError(ValueError):
    """A record that cannot become a canonical sample; ``field`` is a JSON path into the record."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)  # slots: a faster __init__ (one record per input row)
class CanonicalRecord:
    messages: list[tuple[str, str]]
    source_format: str
    source: str = ""
    original_id: str = ""
    imported_tags: list[str] | None = None
    imported_quality: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    deita_turns: tuple[list, list] | None = None  # annotation.deita's quality and complexity lists, complexity cut to quality's length

    @property
    def sample_id(self) -> str:
        return sample_id(self.messages)


_TRAILING_SPACE = re.compile(r"[ \t]+\n")


def normalize_content(text: str) -> str:
    """Identity normalization: NFC, LF line endings, no trailing spaces per line, stripped ends.

    Inner whitespace is kept: indentation is meaning in code samples.
    """
    if not text.isascii():  # ASCII is already NFC (isascii is a flag lookup, normalize a scan)
        text = unicodedata.normalize("NFC", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if " \n" in text or "\t\n" in text:
        text = _TRAILING_SPACE.sub("\n", text)
    return text.strip()


def sample_id(messages: list[tuple[str, str]]) -> str:
    """SHA-256 of the canonical messages: roles + normalized contents as sorted-key compact JSON."""
    canonical = []
    for role, content in messages:  # a loop: cheaper than a comprehension for a few turns
        canonical.append({"content": normalize_content(content), "role": role})  # keys in sorted order
    return hashlib.sha256(orjson.dumps(canonical)).hexdigest()


def detect_format(record: dict) -> str:
    """Pick the adapter from the keys present (first match wins)."""
    if "dialogs" in record:
        return "mig"
    if "conversations" in record:
        return "sharegpt"
    if "messages" in record:
        return "openai"
    if "instruction" in record:
        return "alpaca"
    if "turns" in record:
        return "turns"
    if any(key in record for key in PROMPT_FIELDS):
        return "prompt"
    keys = ", ".join(sorted(map(str, record))[:12]) or "(none)"
    raise RecordError(
        "(record)",
        f"unrecognized format: expected one of the fields dialogs, conversations, messages, instruction, turns, prompt, question; fields present: {keys}",
    )


def canonicalize(record: Any, source_format: str = "auto") -> CanonicalRecord:
    """Turn one parsed input record into a :class:`CanonicalRecord` or raise :class:`RecordError`."""
    if not isinstance(record, dict):
        raise RecordError("(record)", f"expected a JSON object, got {_json_type(record)}")
    fmt = detect_format(record) if source_format == "auto" else source_format
    adapter = ADAPTERS.get(fmt)
    if adapter is None:
        raise RecordError("(config)", f"unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    messages, extra = adapter(record)
    for role, content in messages:  # a loop, not any(): no generator per record
        if role == "user" and content.strip():
            break
    else:
        raise RecordError(_messages_field(fmt), "conversation has no non-empty user turn")
    imported_tags, imported_quality, deita_turns = _annotations(record)
    # positional, in field order (messages, source_format, source, original_id, imported_tags,
    # imported_quality, extra, deita_turns): keywords cost a measurable share of the per-record time
    return CanonicalRecord(messages, fmt, _source(record), _original_id(record), imported_tags, imported_quality, extra, deita_turns)


def _messages_field(fmt: str) -> str:
    return {"mig": "dialogs", "sharegpt": "conversations", "openai": "messages"}.get(fmt, "(record)")


def _turn_list(record: dict, key: str, role_key: str, content_key: str) -> list[tuple[str, str]]:
    turns = record.get(key)
    if turns is None:
        raise RecordError(key, "missing")
    if not isinstance(turns, list):
        raise RecordError(key, f"expected a list of turns, got {_json_type(turns)}")
    if not turns:
        raise RecordError(key, "empty conversation")
    messages = []
    alias = ROLE_ALIASES.get
    for i, turn in enumerate(turns):
        if type(turn) is dict:  # the common turn, checked inline: a plain string role and content
            role, content = turn.get(role_key), turn.get(content_key)
            if type(role) is str and type(content) is str and content.strip():
                role = alias(role) or alias(role.strip().lower())  # the keys are stripped lower case
                if role is not None:
                    messages.append((role, content))
                    continue
        where = f"{key}[{i}]"  # anything else: the full checks, which name the offending field
        if not isinstance(turn, dict):
            raise RecordError(where, f"expected an object, got {_json_type(turn)}")
        messages.append((_role(turn, where, role_key), _content(turn, where, content_key)))
    return messages


def _role(turn: dict, where: str, role_key: str) -> str:
    if role_key not in turn:
        raise RecordError(f"{where}.{role_key}", "missing role")
    raw = turn[role_key]
    if not isinstance(raw, str):
        raise RecordError(f"{where}.{role_key}", f"role must be a string, got {_json_type(raw)}")
    role = ROLE_ALIASES.get(raw.strip().lower())
    if role is None:
        known = ", ".join(sorted(ROLE_ALIASES))
        raise RecordError(f"{where}.{role_key}", f"unknown role {raw!r}; known roles: {known}")
    return role


def _content(turn: dict, where: str, content_key: str) -> str:
    path = f"{where}.{content_key}"
    if content_key not in turn:
        raise RecordError(path, "missing content")
    content = turn[content_key]
    if isinstance(content, list):  # OpenAI content parts
        content = _text_parts(content, path)
    if not isinstance(content, str):
        raise RecordError(path, f"content must be a string, got {_json_type(content)}")
    if not content.strip():
        raise RecordError(path, "empty content")
    return content


def _text_parts(parts: list, path: str) -> str:
    texts = []
    for i, part in enumerate(parts):
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            raise RecordError(f"{path}[{i}]", "only text content parts ({'type': 'text', 'text': ...}) are supported")
        texts.append(part["text"])
    return "\n".join(texts)


def _mig(record: dict):
    return _turn_list(record, "dialogs", "role", "content"), {}


def _sharegpt(record: dict):
    return _turn_list(record, "conversations", "from", "value"), {}


def _openai(record: dict):
    return _turn_list(record, "messages", "role", "content"), {}


def _alpaca(record: dict):
    """instruction (+ input) -> one user turn; output -> assistant turn. Self-instruct's
    ``instances`` list supplies input/output from its first instance (all instances stay in raw)."""
    instruction = _string_field(record, "instruction", required=True)
    source = record
    prefix = ""
    instances = record.get("instances")
    if instances is not None and "input" not in record and "output" not in record:
        if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
            raise RecordError("instances", "expected a non-empty list of {input, output} objects")
        source, prefix = instances[0], "instances[0]."
    user_input = _string_field(source, "input", required=False, prefix=prefix)
    output = _string_field(source, "output", required=False, prefix=prefix)
    return alpaca_messages(instruction, user_input, output), {}


def alpaca_messages(instruction: str, user_input: str, output: str) -> list[tuple[str, str]]:
    """The user turn (instruction, a blank line, the input if it is not blank) and the assistant
    turn (the output, if it is not blank), of fields already read as strings."""
    messages = [("user", f"{instruction}\n\n{user_input}" if user_input.strip() else instruction)]
    if output.strip():
        messages.append(("assistant", output))
    return messages


def _turns(record: dict):
    """MT-Bench style ``turns``: a list of user prompts (strings) or of chat turns."""
    turns = record["turns"]
    if not isinstance(turns, list):
        raise RecordError("turns", f"expected a list, got {_json_type(turns)}")
    if not turns:
        raise RecordError("turns", "empty conversation")
    if all(isinstance(t, dict) for t in turns):
        return _turn_list(record, "turns", "role", "content"), {}
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, str):
            raise RecordError(f"turns[{i}]", f"expected a string, got {_json_type(turn)}")
        if not turn.strip():
            raise RecordError(f"turns[{i}]", "empty content")
        messages.append(("user", turn))
    return messages, {}


def _prompt(record: dict):
    key = next((k for k in PROMPT_FIELDS if k in record), PROMPT_FIELDS[0])
    prompt = _string_field(record, key, required=True)
    messages = [("user", prompt)]
    response_key = next((k for k in RESPONSE_FIELDS if k in record), None)
    if response_key is not None:
        response = _string_field(record, response_key, required=False)
        if response.strip():
            messages.append(("assistant", response))
    system = record.get("system")
    if isinstance(system, str) and system.strip():
        messages.insert(0, ("system", system))
    return messages, {}


ADAPTERS: dict[str, Callable[[dict], tuple[list[tuple[str, str]], dict]]] = {
    "mig": _mig,
    "sharegpt": _sharegpt,
    "openai": _openai,
    "alpaca": _alpaca,
    "turns": _turns,
    "prompt": _prompt,
}


def _string_field(record: dict, key: str, *, required: bool, prefix: str = "") -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise RecordError(prefix + key, "missing")
        return ""
    if not isinstance(value, str):
        raise RecordError(prefix + key, f"must be a string, got {_json_type(value)}")
    if required and not value.strip():
        raise RecordError(prefix + key, "empty content")
    return value


def _annotations(record: dict) -> tuple[list[str] | None, float | None, tuple[list, list] | None]:
    """Imported InsTag tags, the Deita score (mean over turns of quality x complexity) and its
    per-turn lists (complexity cut to the quality list's length)."""
    annotation = record.get("annotation")
    if not isinstance(annotation, dict):
        return None, None, None
    tags = None
    instag = annotation.get("instag")
    if isinstance(instag, dict) and "content" in instag:
        tags = instag["content"]
        plain = type(tags) is list and STRING_TYPES.issuperset(map(type, tags))  # the common case, checked in C
        if not plain and (not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)):
            raise RecordError("annotation.instag.content", "expected a list of strings")
    quality = turns = None
    deita = annotation.get("deita")
    if isinstance(deita, dict) and "quality_scores" in deita:
        per_turn, complexity = deita.get("quality_scores"), deita.get("complexity_scores")
        quality = deita_score(per_turn, complexity)  # validates both: lists of numbers, complexity at least as long
        turns = (cast(list, per_turn), cast(list, complexity)[: len(cast(list, per_turn))])
    return tags, quality, turns


def deita_score(quality_scores: Any, complexity_scores: Any) -> float:
    """Deita score = (1/R) sum_t quality_t * complexity_t over the R turns of ``quality_scores``."""
    base = "annotation.deita"
    if not _plain_scores(quality_scores, complexity_scores):
        _check_scores(quality_scores, f"{base}.quality_scores")
        _check_scores(complexity_scores, f"{base}.complexity_scores")
    if len(complexity_scores) < len(quality_scores):
        raise RecordError(
            f"{base}.complexity_scores",
            f"has {len(complexity_scores)} scores for {len(quality_scores)} quality scores",
        )
    return deita_mean(quality_scores, complexity_scores)


def deita_mean(quality_scores: list, complexity_scores: list) -> float:
    """(1/R) sum_t quality_t * complexity_t over the R turns of ``quality_scores``, for lists
    :func:`deita_score` (or a typed decoder) has already validated."""
    # map(mul) pairs the lists as zip does: the same products, summed in the same order
    return sum(map(mul, quality_scores, complexity_scores)) / len(quality_scores)


def _plain_scores(quality_scores: Any, complexity_scores: Any) -> bool:
    """The valid case, checked in C over both lists at once: non-empty lists of plain floats and
    ints, all >= 0, finite and at most MAX_EXACT_INT.

    False only sends the lists to :func:`_check_scores`, which finds the offending value. min() and
    max() run before isfinite, which would raise OverflowError for an int too large for a float."""
    if not (type(quality_scores) is list and type(complexity_scores) is list and quality_scores and complexity_scores):
        return False
    values = quality_scores + complexity_scores  # in the order _check_scores visits them
    return NUMBER_TYPES.issuperset(map(type, values)) and min(values) >= 0 and max(values) <= MAX_EXACT_INT and all(map(math.isfinite, values))


def _check_scores(values: Any, path: str) -> None:
    """Raise for the first value that is not a finite non-negative number (bools are not numbers)."""
    if not isinstance(values, list) or not values:
        raise RecordError(path, "expected a non-empty list of numbers")
    for i, v in enumerate(values):
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_EXACT_INT:
            raise RecordError(f"{path}[{i}]", f"integer {v} is beyond 2**53, the largest a float64 score holds exactly")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise RecordError(f"{path}[{i}]", f"expected a finite non-negative number, got {v!r}")


def _source(record: dict) -> str:
    for key in ("source", "dataset"):
        value = record.get(key)
        if value is None:  # the usual miss, decided without the type checks
            continue
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            try:  # join accepts exactly the lists of strings
                return ",".join(value)
            except TypeError:
                pass
    return ""


def _original_id(record: dict) -> str:
    for key in ID_FIELDS:
        value = record.get(key)
        if value is not None and isinstance(value, (str, int)) and not isinstance(value, bool):  # None: the usual miss
            return str(value)
    return ""


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )
