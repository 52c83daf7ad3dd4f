"""Per-sample quality scores, Deita style: complexity (of each user query) x quality (of the reply).

Backends:

* ``imported``: the Deita annotation the pool already carries (``imported_quality``, the mean over
  turns of quality x complexity; the per-turn lists are read back from the raw record).
* ``logprob``: Deita's scorer recipe. One token is generated after Deita's template and the
  log-probabilities of the digits "1".."6" at that first position give the expected score
  ``sum_k k * softmax(logprob_k)`` in [1, 6]. The digit token ids come from the model's tokenizer
  at start-up and must be single tokens (:class:`DigitTokenError` otherwise). A digit missing from
  the returned log-probabilities has probability 0; no digit at all is a failure.
* ``judge``: an LLM rubric prompt answered as JSON ``{"complexity": 1..6, "quality": 1..6}``
  (schema-constrained decoding, parsed with the tagging contract, retried like tagging).

Sample score: a turn is a (user turns, next assistant turn) pair; its score is complexity x quality
(so in [1, 36]); the sample's score is the **mean over its turns** (MIG's rule, and what the
``imported`` annotation holds; Deita itself sums over turns, which favours long conversations). For
a single-turn sample both rules give complexity x quality.

Every sample gets one row with a status: ``ok``; ``failed`` (with a reason; ``score`` NULL: a
failure is never replaced by a default score, the lesson of Deita's silent 3.0); ``no_response``
(no assistant turn to judge) or ``no_annotation`` (imported backend, no Deita annotation). Only
``ok`` rows carry a score.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from mig_assets.core.embedding.encoder import text_hash
from mig_assets.core.llm.backends import Sampling, complete_with_retries
from mig_assets.core.store.parquet import BatchFileCache
from mig_assets.core.tagging.prompts import load_answer_json

DIGITS = ("1", "2", "3", "4", "5", "6")
SCORE_RANGE = (1.0, 36.0)  # complexity x quality, each in [1, 6]


# ---------------------------------------------------------------------------------------------
# prompts


@dataclass(frozen=True)
class ScorePrompt:
    """A versioned scorer prompt. ``kind`` "logprob": ``complexity`` and ``quality`` templates read
    by digit log-probabilities, sent as plain text (``chat=False``, how Deita's scorers were trained)
    or as a user message through the chat template. ``kind`` "judge": one rubric message per turn
    answered in JSON matching ``schema``."""

    version: str
    kind: str
    complexity: str = ""  # {instruction}
    quality: str = ""  # {instruction}, {output}
    judge: str = ""  # {instruction}, {output}
    system: str = ""
    schema: dict | None = None
    chat: bool = False

    def _wrap(self, text: str) -> list[dict] | str:
        if not self.chat:
            return text
        return ([{"role": "system", "content": self.system}] if self.system else []) + [{"role": "user", "content": text}]

    def complexity_prompt(self, query: str) -> list[dict] | str:
        return self._wrap(self.complexity.format(instruction=query))

    def quality_prompt(self, query: str, response: str) -> list[dict] | str:
        return self._wrap(self.quality.format(instruction=query, output=response))

    def judge_messages(self, query: str, response: str) -> list[dict]:
        user = [{"role": "user", "content": self.judge.format(instruction=query, output=response)}]
        return ([{"role": "system", "content": self.system}] if self.system else []) + user

    @property
    def fingerprint(self) -> str:
        """Changes whenever a template, the schema or the format changes: part of every cache key."""
        text = json.dumps([self.version, self.kind, self.complexity, self.quality, self.judge, self.system, self.schema, self.chat], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# Deita's templates, verbatim (hkust-nlp/deita, scorer code): its scorers were trained on exactly
# these strings, whitespace included.
DEITA_COMPLEXITY = "You are a helpful assistant. Please identify the complexity score of the following user query. \n##Query: {instruction}  \n##Complexity: "
DEITA_QUALITY = (
    "You are a helpful assistant. Please identify the quality score of the Response corresponding to the "
    "Question. \n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: "
)
_SCORE_1_6 = {"type": "integer", "minimum": 1, "maximum": 6}
JUDGE_SCHEMA = {
    "type": "object",
    "properties": {"complexity": _SCORE_1_6, "quality": _SCORE_1_6},
    "required": ["complexity", "quality"],
    "additionalProperties": False,
}

PROMPTS = {
    # Deita's scorers (and base models): the bare template, no chat template.
    "deita-v1": ScorePrompt(version="deita-v1", kind="logprob", complexity=DEITA_COMPLEXITY, quality=DEITA_QUALITY),
    # the same templates as a user message, for instruct models without a trained scorer head.
    # Measured on SmolLM2-135M-Instruct: ~1% of the first-token mass on the digits, against 20-60% raw.
    "deita-chat-v1": ScorePrompt(version="deita-chat-v1", kind="logprob", complexity=DEITA_COMPLEXITY, quality=DEITA_QUALITY, chat=True),
    "judge-v1": ScorePrompt(
        version="judge-v1",
        kind="judge",
        system="You rate instruction-tuning samples. Return only JSON matching the schema, no prose.",
        judge=(
            "Rate the sample below on two scales from 1 to 6.\n"
            "complexity (of the query): 1 trivial (a greeting, one fact); 2 simple; 3 moderate (several steps "
            "or some domain knowledge); 4 involved; 5 hard (expert knowledge, several constraints); 6 very hard "
            "(research level, many interacting constraints).\n"
            "quality (of the response to that query): 1 wrong, harmful or off-topic; 2 poor; 3 partly correct "
            "or incomplete; 4 correct but plain; 5 correct, complete and clear; 6 excellent (correct, complete, "
            "well explained and well formatted).\n"
            'Respond in the JSON format {{"complexity": int, "quality": int}}.\n'
            "Query:\n<<<\n{instruction}\n>>>\nResponse:\n<<<\n{output}\n>>>"
        ),
        schema=JUDGE_SCHEMA,
        chat=True,
    ),
}
DEFAULT_PROMPTS = {"logprob": "deita-v1", "judge": "judge-v1"}


# ---------------------------------------------------------------------------------------------
# the arithmetic


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
    ids = {digit: token_ids[0] for digit, token_ids in encoded.items()}
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


def turn_pairs(messages: list[dict]) -> list[tuple[str, str]]:
    """(query, response) per assistant turn: the user turns since the previous reply, joined, and
    the reply. System and tool turns are ignored; an assistant turn with no user turn before it too."""
    pairs, pending = [], []
    for message in messages:
        if message["role"] == "user":
            pending.append(message["content"])
        elif message["role"] == "assistant" and pending:
            pairs.append(("\n\n".join(pending), message["content"]))
            pending = []
    return pairs


def sample_score(complexity: list[float], quality: list[float]) -> float:
    """Mean over turns of complexity_t x quality_t."""
    if not complexity or len(complexity) != len(quality):
        raise ValueError(f"need as many complexity as quality scores, got {len(complexity)} and {len(quality)}")
    return sum(c * q for c, q in zip(complexity, quality)) / len(complexity)


def degenerate(scores: list[float], failures: int, max_failure_rate: float, *, tolerance: float = 1e-9) -> str | None:
    """Why a shard's scores are unusable, or None: the failure rate (failures over scored + failed)
    above ``max_failure_rate``, or two or more scores that are all equal (a constant scorer, like
    Deita's silent 3.0). Samples without anything to score (no response, no annotation) don't count."""
    attempted = len(scores) + failures
    if attempted and failures / attempted > max_failure_rate:
        return f"failure rate {failures / attempted:.1%} ({failures}/{attempted}) above {max_failure_rate:.1%}"
    if len(scores) >= 2 and max(scores) - min(scores) <= tolerance:
        return f"all {len(scores)} scores equal {scores[0]:.6g}"
    return None


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
            try:
                raw, repairs = float(raw.strip()), repairs + [f"{name} given as a string"]
            except ValueError:
                return JudgeAnswer("failed", reason=f"{name} is not a number: {raw[:40]!r}")
        if raw is None:
            return JudgeAnswer("failed", reason=f"no {name} in the answer")
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
            return JudgeAnswer("failed", reason=f"{name} is not a number: {raw!r}")
        if not 1 <= raw <= 6:
            return JudgeAnswer("failed", reason=f"{name} {raw} outside 1..6")
        scores[name] = float(raw)
    return JudgeAnswer("repaired" if repairs else "ok", scores["complexity"], scores["quality"], "; ".join(repairs))


# ---------------------------------------------------------------------------------------------
# rows, cache and the scoring loop

QUALITY_ROW_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("shard", pa.string()),
        ("score", pa.float64()),  # mean over turns of complexity x quality; NULL unless status = 'ok'
        ("complexity", pa.list_(pa.float64())),  # per turn (NULL when unknown)
        ("quality", pa.list_(pa.float64())),  # per turn
        ("n_turns", pa.int32()),  # (query, response) pairs scored
        ("status", pa.string()),  # ok | failed | no_response | no_annotation
        ("reason", pa.string()),
        ("backend", pa.string()),
        ("model", pa.string()),
        ("prompt_version", pa.string()),
        ("digit_mass", pa.float64()),  # logprob: least probability the model put on the digits 1..6
        ("truncated", pa.bool_()),
    ]
)


def imported_quality_rows(samples: pa.Table, shard: str) -> pa.Table:
    """Rows from the shard's kept samples (columns sample_id, imported_quality, raw): the Deita
    score the pool carries, with its per-turn lists when the raw record still has them. Column by
    column: only the per-turn lists need each raw record parsed (orjson: ingestion parsed it with it)."""
    n = samples.num_rows
    raws = samples.column("raw").to_pylist() if "raw" in samples.column_names else [None] * n
    lists = [_deita_lists(raw) for raw in raws]
    quality = [q for _, q in lists]
    score = samples.column("imported_quality")
    present = pc.is_valid(score)

    def repeat(value, type_: pa.DataType) -> pa.Array:
        return pa.repeat(pa.scalar(value, type_), n)

    columns = {
        "sample_id": samples.column("sample_id"),
        "shard": repeat(shard, pa.string()),
        "score": score,
        "complexity": pa.array([c for c, _ in lists], pa.list_(pa.float64())),
        "quality": pa.array(quality, pa.list_(pa.float64())),
        "n_turns": pa.array([len(q) if q else None for q in quality], pa.int32()),
        "status": pc.if_else(present, "ok", "no_annotation"),
        "reason": pc.if_else(present, "", "the record carries no annotation.deita"),
        "backend": repeat("imported", pa.string()),
        "model": repeat("", pa.string()),
        "prompt_version": repeat("", pa.string()),
        "digit_mass": pa.nulls(n, pa.float64()),
        "truncated": repeat(False, pa.bool_()),
    }
    return pa.table(columns, schema=QUALITY_ROW_SCHEMA)


def _deita_lists(raw: str | None) -> tuple[list[float] | None, list[float] | None]:
    try:
        deita = orjson.loads(raw)["annotation"]["deita"]
        quality = [float(v) for v in deita["quality_scores"]]
        complexity = [float(v) for v in deita["complexity_scores"]][: len(quality)]
        return complexity, quality
    except (TypeError, KeyError, ValueError):  # orjson.JSONDecodeError is a ValueError
        return None, None


CACHE_SCHEMA = pa.schema(
    [
        ("unit_hash", pa.string()),  # the key: SHA-256 of the unit kind and the text(s) it reads
        ("kind", pa.string()),  # complexity | quality | judge
        ("sample_id", pa.string()),  # the first sample seen with that unit
        ("complexity", pa.float64()),
        ("quality", pa.float64()),
        ("digit_mass", pa.float64()),
        ("status", pa.string()),  # ok | repaired | failed
        ("reason", pa.string()),
        ("attempts", pa.int32()),
        ("truncated", pa.bool_()),
        ("raw_output", pa.string()),
    ]
)


class QualityCache(BatchFileCache):
    """Scores per (model, prompt fingerprint, settings), keyed by the hash of what was scored:
    the query for a complexity score (shared by every answer to the same question), the query and
    response for a quality or judge score. Append-only batch files, each written atomically once
    its batch is scored, so a crash loses at most the batch in flight and a re-run scores the rest.

    Transient backend errors are not cached (a re-run retries them); deterministic failures (no
    digit in the log-probabilities, an unparseable answer after every retry) are.
    """

    schema = CACHE_SCHEMA
    key_column = "unit_hash"

    def __init__(self, folder: Path, model_id: str, prompt: ScorePrompt, settings: str = ""):
        self.key = f"{prompt.version}-{prompt.fingerprint}" + (f"-{settings}" if settings else "")
        super().__init__(Path(folder) / f"model={model_id.replace('/', '_')}" / f"prompt={self.key}")


@dataclass
class ScoringStats:
    samples: int = 0
    units: int = 0  # distinct LLM calls the shard needs
    cached: int = 0  # of those, found in the cache
    scored: int = 0  # newly scored
    statuses: dict = field(default_factory=dict)
    truncated: int = 0
    generate_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def samples_per_second(self) -> float:
        """The shard's samples (cached or not) over the scoring time."""
        return self.samples / self.seconds if self.seconds else 0.0

    @property
    def units_per_second(self) -> float:
        """Newly scored LLM calls over the time spent in the backend."""
        return self.scored / self.generate_seconds if self.generate_seconds else 0.0


BACKEND_ERROR = "backend error"


def unit_key(kind: str, *texts: str) -> str:
    return text_hash("\x00".join([kind, *texts]))


def score_samples(
    samples: list[tuple[str, list[dict]]],
    backend,
    prompt: ScorePrompt,
    cache: QualityCache,
    *,
    labels: dict[str, int] | None = None,
    max_query_tokens: int = 768,
    max_response_tokens: int = 1024,
    batch_size: int = 512,
    sampling: Sampling = Sampling(max_tokens=32),
    max_attempts: int = 3,
    retry_temperature: float = 0.7,
    top_k: int = 20,
    log: Callable[[str], None] = lambda message: None,
) -> tuple[dict[str, dict], ScoringStats]:
    """Score ``(sample_id, messages)`` with an LLM ``backend`` (``first_token_logprobs`` for a
    logprob prompt, ``complete`` for a judge prompt); returns a result row per sample_id (the
    QUALITY_ROW_SCHEMA fields that depend on the scoring) and the run's figures.

    Only units the cache lacks are sent, ``batch_size`` at a time, each batch appended to the cache.
    ``labels`` maps "1".."6" to their token ids (from :func:`digit_token_ids`).
    """
    started = time.perf_counter()
    stats = ScoringStats(samples=len(samples))
    units: dict[str, tuple] = {}  # key -> (kind, sample_id, query, response)
    plan: dict[str, list[tuple[str, ...]]] = {}  # sample_id -> per turn, the unit keys
    for sample_id, messages in samples:
        turns = []
        for query, response in turn_pairs(messages):
            if prompt.kind == "logprob":
                keys = (unit_key("complexity", query), unit_key("quality", query, response))
                units.setdefault(keys[0], ("complexity", sample_id, query, None))
                units.setdefault(keys[1], ("quality", sample_id, query, response))
            else:
                keys = (unit_key("judge", query, response),)
                units.setdefault(keys[0], ("judge", sample_id, query, response))
            turns.append(keys)
        plan[sample_id] = turns
    done = cache.lookup(list(units))
    stats.units, stats.cached = len(units), len(done)
    todo = [key for key in units if key not in done]
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        clock = time.perf_counter()
        if prompt.kind == "logprob":
            rows = _logprob_batch(batch, units, backend, prompt, labels, max_query_tokens, max_response_tokens, top_k, stats)
        else:
            rows = _judge_batch(batch, units, backend, prompt, max_query_tokens, max_response_tokens, sampling, max_attempts, retry_temperature, stats)
        stats.generate_seconds += time.perf_counter() - clock
        cache.append([row for row in rows if row["reason"] != BACKEND_ERROR])
        done.update((row["unit_hash"], row) for row in rows)
        stats.scored += len(rows)
        elapsed = time.perf_counter() - started
        log(f"scored {stats.scored:,}/{len(todo):,} new units ({stats.scored / elapsed:.2f} units/s), {stats.cached:,} from cache")
    stats.seconds = time.perf_counter() - started
    results = {sample_id: _sample_result(turns, done) for sample_id, turns in plan.items()}
    stats.statuses = dict(Counter(row["status"] for row in results.values()))
    return results, stats


def _cut(backend, text: str, max_tokens: int, stats: ScoringStats) -> tuple[str, bool]:
    cut, truncated, _ = backend.truncate(text, max_tokens)
    stats.truncated += truncated
    return cut, truncated


def _logprob_batch(batch, units, backend, prompt, labels, max_query_tokens, max_response_tokens, top_k, stats) -> list[dict]:
    prompts, rows = [], []
    for key in batch:
        kind, sample_id, query, response = units[key]
        query, truncated = _cut(backend, query, max_query_tokens, stats)
        if kind == "complexity":
            prompts.append(prompt.complexity_prompt(query))
        else:
            response, cut_response = _cut(backend, response, max_response_tokens, stats)
            truncated = truncated or cut_response
            prompts.append(prompt.quality_prompt(query, response))
        rows.append({"unit_hash": key, "kind": kind, "sample_id": sample_id, "truncated": truncated, "attempts": 1})
    answers = backend.first_token_logprobs(prompts, labels or {d: -1 for d in DIGITS}, top_k)
    for row, answer in zip(rows, answers):
        row |= {"complexity": None, "quality": None, "digit_mass": None, "raw_output": json.dumps(answer) if answer is not None else None}
        if answer is None:
            row |= {"status": "failed", "reason": BACKEND_ERROR}
            continue
        try:
            score = expected_score(answer)
        except ValueError as exc:
            row |= {"status": "failed", "reason": str(exc)}
            continue
        row |= {row["kind"]: score, "digit_mass": digit_mass(answer), "status": "ok", "reason": ""}
    return rows


def _judge_batch(batch, units, backend, prompt, max_query_tokens, max_response_tokens, sampling, max_attempts, retry_temperature, stats) -> list[dict]:
    conversations, rows = {}, {}
    for key in batch:
        _, sample_id, query, response = units[key]
        query, cut_query = _cut(backend, query, max_query_tokens, stats)
        response, cut_response = _cut(backend, response, max_response_tokens, stats)
        conversations[key] = prompt.judge_messages(query, response)
        rows[key] = {"unit_hash": key, "kind": "judge", "sample_id": sample_id, "truncated": cut_query or cut_response, "digit_mass": None}
    answers = complete_with_retries(
        backend,
        conversations,
        prompt.schema,
        sampling,
        lambda answer: parse_judge_output(answer) if answer is not None else JudgeAnswer("failed", reason=BACKEND_ERROR),
        max_attempts=max_attempts,
        retry_temperature=retry_temperature,
    )
    for key, (parsed, answer, attempts) in answers.items():
        rows[key] |= {
            "complexity": parsed.complexity,
            "quality": parsed.quality,
            "status": parsed.status,
            "reason": parsed.reason,
            "attempts": attempts,
            "raw_output": answer,
        }
    return [rows[key] for key in batch]


def _sample_result(turns: list[tuple[str, ...]], done: dict[str, dict]) -> dict:
    if not turns:
        return {
            "score": None,
            "complexity": None,
            "quality": None,
            "n_turns": 0,
            "status": "no_response",
            "reason": "no assistant turn to judge",
            "digit_mass": None,
            "truncated": False,
        }
    complexity, quality, masses, truncated = [], [], [], False
    for t, keys in enumerate(turns):
        rows = [done[key] for key in keys]
        truncated = truncated or any(row["truncated"] for row in rows)
        failed = [row for row in rows if row["status"] == "failed"]
        if failed:
            where = f"turn {t + 1} {failed[0]['kind']}: " if len(turns) > 1 or failed[0]["kind"] != "judge" else ""
            return {
                "score": None,
                "complexity": None,
                "quality": None,
                "n_turns": len(turns),
                "status": "failed",
                "reason": where + failed[0]["reason"],
                "digit_mass": None,
                "truncated": truncated,
            }
        by_kind = {row["kind"]: row for row in rows}
        judge = by_kind.get("judge")
        complexity.append((judge or by_kind["complexity"])["complexity"])
        quality.append((judge or by_kind["quality"])["quality"])
        masses += [row["digit_mass"] for row in rows if row["digit_mass"] is not None]
    return {
        "score": sample_score(complexity, quality),
        "complexity": complexity,
        "quality": quality,
        "n_turns": len(turns),
        "status": "ok",
        "reason": "",
        "digit_mass": min(masses) if masses else None,
        "truncated": truncated,
    }


def quality_rows(results: dict[str, dict], sample_ids: list[str], shard: str, backend: str, model: str, prompt_version: str) -> pa.Table:
    """The shard's quality_scores table, one row per sample in ``sample_ids`` order."""
    rows = [
        {**results[sample_id], "sample_id": sample_id, "shard": shard, "backend": backend, "model": model, "prompt_version": prompt_version}
        for sample_id in sample_ids
    ]
    return pa.Table.from_pylist(rows, schema=QUALITY_ROW_SCHEMA)


def score_histogram(scores: list[float], lo: float = SCORE_RANGE[0], hi: float = SCORE_RANGE[1], bins: int = 7) -> list[tuple[float, float, int]]:
    """Counts over ``bins`` equal bins of [lo, hi] (the last bin closed); values outside go to the edges."""
    width = (hi - lo) / bins
    counts = [0] * bins
    for score in scores:
        counts[min(bins - 1, max(0, int((score - lo) // width)))] += 1
    return [(lo + i * width, lo + (i + 1) * width, n) for i, n in enumerate(counts)]


def histogram_markdown(scores: list[float]) -> str:
    if not scores:
        return "_no scores_"
    histogram = score_histogram(scores)
    top = max(n for _, _, n in histogram) or 1
    lines = ["| score | samples | |", "|---|---|---|"]
    for i, (a, b, n) in enumerate(histogram):
        bracket = "]" if i == len(histogram) - 1 else ")"
        lines.append(f"| [{a:g}, {b:g}{bracket} | {n} | {'█' * round(20 * n / top)} |")
    ordered = sorted(scores)
    median = ordered[len(ordered) // 2] if len(ordered) % 2 else (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2
    lines.append("")
    lines.append(
        f"min {ordered[0]:.3g}, median {median:.3g}, mean {sum(ordered) / len(ordered):.3g}, max {ordered[-1]:.3g}, "
        f"{len(set(ordered))} distinct values over {len(ordered)} samples"
    )
    return "\n".join(lines)
