"""The LLM answer contract, shared by tagging and the quality judge.

A model answer is read as JSON after documented repairs (a think block, a code fence, prose around
the JSON, text after it, a truncated tail closed); every caller then checks the value against its
own schema and ends with a status ``ok``, ``repaired`` (usable after a repair) or ``failed`` (with a
reason, never a default). Failed answers are asked again (:func:`complete_with_retries`).
"""

from __future__ import annotations

import json
import re
from typing import Callable, Protocol, TypeVar

from mig_assets.core.llm.backends import LLMBackend, Sampling


class ParsedAnswer(Protocol):
    """What a caller's parser returns: at least a status (``ok``, ``repaired`` or ``failed``)."""

    @property
    def status(self) -> str: ...


Parsed = TypeVar("Parsed", bound=ParsedAnswer)

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)(```|$)", re.DOTALL | re.IGNORECASE)


def load_answer_json(text: str) -> tuple[object, list[str]]:
    """The JSON value in a model answer, after removing a think block and a code fence, and the
    repairs made (including :func:`_load_json`'s); the value is None when nothing parses."""
    repairs: list[str] = []
    cleaned = text.strip()
    if _THINK.search(cleaned):
        cleaned, repairs = _THINK.sub("", cleaned).strip(), repairs + ["think block removed"]
    fence = _FENCE.search(cleaned)
    if fence:
        cleaned, repairs = fence.group(1).strip(), repairs + ["code fence removed"]
    value, how = _load_json(cleaned)
    return value, repairs + how


def _load_json(text: str):
    """The JSON value in ``text`` and the repairs it took, or (None, [])."""
    try:
        return json.loads(text), []
    except json.JSONDecodeError:
        pass
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        return None, []
    candidate, repairs = text[start:], []
    if start > 0:
        repairs.append("prose around the JSON removed")
    decoder = json.JSONDecoder()
    try:
        value, _ = decoder.raw_decode(candidate)
        return value, repairs + (["text after the JSON removed"] if _ != len(candidate) else [])
    except json.JSONDecodeError:
        closed = _close_truncated(candidate)
        try:
            return json.loads(closed), repairs + ["truncated JSON closed"]
        except json.JSONDecodeError:
            return None, []


def _close_truncated(text: str) -> str:
    """Close an answer cut off mid-way: keep up to the last complete item, close open brackets."""
    stack: list[str] = []
    in_string = escaped = False
    cut, open_at_cut = 0, []
    for i, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "[{":
            stack.append("]" if char == "[" else "}")
            cut, open_at_cut = i + 1, list(stack)
        elif char in "]}" and stack:
            stack.pop()
            cut, open_at_cut = i + 1, list(stack)
        elif char == ",":
            cut, open_at_cut = i, list(stack)
    return text[:cut] + "".join(reversed(open_at_cut))


def complete_with_retries(
    backend: LLMBackend,
    conversations: dict[str, list[dict]],
    schema: dict,
    sampling: Sampling,
    parse: Callable[[str | None], Parsed],
    *,
    max_attempts: int,
    retry_temperature: float,
) -> dict[str, tuple[Parsed, str | None, int]]:
    """Ask ``backend`` for every conversation and ask again for those whose answer ``parse`` marks
    ``failed`` (``parse(None)`` is a backend error), at ``retry_temperature`` with a per-attempt seed,
    ``max_attempts`` tries in all. Returns key -> (parsed answer, raw answer, attempts made)."""
    results: dict[str, tuple[Parsed, str | None, int]] = {}
    pending = list(conversations)
    for attempt in range(1, max_attempts + 1):
        attempt_sampling = sampling if attempt == 1 else Sampling(retry_temperature, sampling.max_tokens, sampling.seed + attempt)
        answers = backend.complete([conversations[key] for key in pending], schema, attempt_sampling)
        for key, answer in zip(pending, answers):
            results[key] = (parse(answer), answer, attempt)
        pending = [key for key in pending if results[key][0].status == "failed"]
        if not pending:
            break
    return results
