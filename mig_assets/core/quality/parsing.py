"""Reading a scorer's answers: the digit tokens and Deita's expected score over their
log-probabilities (logprob backend), and the judge's JSON answer under the LLM answer contract
(both scores numbers in [1, 6]). No answer ever becomes a default score."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

from mig_assets.core.llm.answers import load_answer_json

DIGITS = ("1", "2", "3", "4", "5", "6")


class DigitTokenError(ValueError):
    """The tokenizer does not read each of the digits 1..6 as one distinct token."""


def digit_token_ids(tokenize: Callable[[str], list[int] | None], digits=DIGITS) -> dict[str, int] | None:
    """``{"1": id, ..., "6": id}`` from the tokenizer; raises :class:`DigitTokenError` when a digit
    is not exactly one token or two digits share an id. ``None`` when the tokenizer is unavailable
    for every digit (a hosted API without a tokenize endpoint: labels are then matched by text)."""
    encoded = {digit: tokenize(digit) for digit in digits}
    if all(ids is None for ids in encoded.values()):
        return None
    bad = {digit: ids for digit, ids in encoded.items() if ids is None or len(ids) != 1}
    if bad:
        raise DigitTokenError(
            "the logprob scorer reads the digits 1..6 as single tokens, but this tokenizer encodes "
            + ", ".join(f"{d!r} as {ids}" for d, ids in bad.items())
            + "; use a model whose tokenizer has one token per digit, or the judge backend"
        )
    ids = {digit: token_ids[0] for digit, token_ids in encoded.items() if token_ids is not None}
    if len(set(ids.values())) != len(ids):
        raise DigitTokenError(f"digits share token ids: {ids}")
    return ids


def expected_score(logprobs: Mapping[str, float], digits=DIGITS) -> float:
    """Deita's expected score: sum_k k * softmax(logprob)_k over the digits "1".."6" (in [1, 6]).

    A digit missing from ``logprobs`` (or at -inf) has probability 0. Raises ValueError when no digit
    has a finite log-probability or a value is NaN / +inf: never a default.
    """
    values = {}
    for digit in digits:
        value = logprobs.get(digit)
        if value is None:
            continue
        value = float(value)
        if math.isnan(value) or value == math.inf:
            raise ValueError(f"log-probability of {digit!r} is {value}")
        if value > -math.inf:
            values[digit] = value
    if not values:
        raise ValueError("no digit 1..6 among the first position's log-probabilities")
    top = max(values.values())
    weights = {digit: math.exp(value - top) for digit, value in values.items()}
    total = sum(weights.values())
    return sum(int(digit) * weight for digit, weight in weights.items()) / total


def digit_mass(logprobs: Mapping[str, float], digits=DIGITS) -> float:
    """Probability the model put on the digits at all (1 when the backend returns renormalized values)."""
    return sum(math.exp(v) for d, v in logprobs.items() if d in digits and v is not None and v > -math.inf)


@dataclass(frozen=True)
class JudgeAnswer:
    status: str  # ok | repaired | failed
    complexity: float | None = None
    quality: float | None = None
    reason: str = ""


def parse_judge_output(text: str | None) -> JudgeAnswer:
    """Apply the tagging parse contract to a rubric answer: both scores numbers in [1, 6]."""
    if text is None or not text.strip():
        return JudgeAnswer("failed", reason="empty output")
    value, repairs = load_answer_json(text)
    if not isinstance(value, dict):
        return JudgeAnswer("failed", reason=f"not a JSON object: {text.strip()[:80]!r}")
    scores = {}
    for name in ("complexity", "quality"):
        raw = value.get(name)
        if isinstance(raw, str):
            written = raw
            try:
                raw, repairs = float(written.strip()), repairs + [f"{name} given as a string"]
            except ValueError:
                return JudgeAnswer("failed", reason=f"{name} is not a number: {written[:40]!r}")
        if raw is None:
            return JudgeAnswer("failed", reason=f"no {name} in the answer")
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
            return JudgeAnswer("failed", reason=f"{name} is not a number: {raw!r}")
        if not 1 <= raw <= 6:
            return JudgeAnswer("failed", reason=f"{name} {raw} outside 1..6")
        scores[name] = float(raw)
    return JudgeAnswer("repaired" if repairs else "ok", scores["complexity"], scores["quality"], "; ".join(repairs))
