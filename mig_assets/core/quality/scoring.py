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

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from mig_assets.core.llm.answers import complete_with_retries
from mig_assets.core.llm.backends import Sampling
from mig_assets.core.quality.cache import BACKEND_ERROR, QualityCache, unit_key
from mig_assets.core.quality.parsing import DIGITS, JudgeAnswer, digit_mass, expected_score, parse_judge_output
from mig_assets.core.quality.prompts import ScorePrompt


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
        turns: list[tuple[str, ...]] = []
        for query, response in turn_pairs(messages):
            keys: tuple[str, ...]
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

    def work(batch: list[str]) -> list[dict]:
        clock = time.perf_counter()
        if prompt.kind == "logprob":
            rows = _logprob_batch(batch, units, backend, prompt, labels, max_query_tokens, max_response_tokens, top_k, stats)
        else:
            rows = _judge_batch(batch, units, backend, prompt, max_query_tokens, max_response_tokens, sampling, max_attempts, retry_temperature, stats)
        stats.generate_seconds += time.perf_counter() - clock
        return rows

    for _, rows in cache.fill(todo, batch_size, work, cacheable=lambda row: row["reason"] != BACKEND_ERROR):
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
