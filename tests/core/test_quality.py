"""The quality scorers without Dagster: the expected score, the digit-token check, turns, the
cache (resume after a crash), failures that never become a default, degenerate detection, the
judge parser, and the OpenAI backend's log-probability requests against a stub server."""

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mig_assets.core.llm.backends import OpenAIBackend
from mig_assets.core.quality.cache import BACKEND_ERROR, QualityCache
from mig_assets.core.quality.parsing import DIGITS, DigitTokenError, digit_token_ids, expected_score, parse_judge_output
from mig_assets.core.quality.prompts import PROMPTS
from mig_assets.core.quality.rows import degenerate, deita_lists, histogram_markdown, imported_quality_rows
from mig_assets.core.quality.scoring import sample_score, score_samples, turn_pairs
from tests.fakes import JsonApiHandler, json_api_server
from tests.fakes_quality import TOKEN_OFFSET, ScriptedScorerBackend


def chat(*turns: str) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate(turns)]


SAMPLES = [(f"s{i}", chat(f"question {i} about topic {i % 3}", f"answer {i}: " + "details " * i)) for i in range(10)]


# --- arithmetic -------------------------------------------------------------------------------


def test_expected_score_by_hand():
    probabilities = {"1": 0.1, "2": 0.2, "3": 0.3, "4": 0.4}  # 5 and 6 missing: probability 0
    assert expected_score({d: math.log(p) for d, p in probabilities.items()}) == pytest.approx(1 * 0.1 + 2 * 0.2 + 3 * 0.3 + 4 * 0.4)
    assert expected_score({d: -2.0 for d in DIGITS}) == pytest.approx(3.5)  # uniform
    assert expected_score({"6": -30.0}) == pytest.approx(6.0)
    # a softmax over the six: adding a constant (the full-vocabulary normalizer) changes nothing
    logits = {"1": 0.3, "2": -1.0, "3": 2.0, "4": 0.0, "5": -0.5, "6": 1.1}
    z = sum(math.exp(v) for v in logits.values())
    by_hand = sum(int(d) * math.exp(v) / z for d, v in logits.items())
    assert expected_score(logits) == pytest.approx(by_hand)
    assert expected_score({d: v - 7.25 for d, v in logits.items()}) == pytest.approx(by_hand)
    assert expected_score({"2": -math.inf, "4": -1.0, "other": 5.0}) == pytest.approx(4.0)  # -inf = probability 0
    assert 1.0 <= expected_score({"1": -1e-9, "6": -50.0}) < 1.0001


@pytest.mark.parametrize("logprobs", [{}, {"7": -0.1, "a": -0.2}, {d: -math.inf for d in DIGITS}])
def test_expected_score_without_a_digit_raises_instead_of_defaulting(logprobs):
    with pytest.raises(ValueError, match="no digit 1..6"):
        expected_score(logprobs)
    with pytest.raises(ValueError, match="nan"):
        expected_score({"1": float("nan"), "2": -1.0})


def test_digit_token_ids_come_from_the_tokenizer_and_must_be_single_tokens():
    fake = ScriptedScorerBackend()
    assert digit_token_ids(fake.tokenize) == {d: TOKEN_OFFSET + ord(d) for d in DIGITS}
    with pytest.raises(DigitTokenError, match=r"single tokens.*'1' as \[1000, 1049\]"):
        digit_token_ids(ScriptedScorerBackend(multi_token_digits=True).tokenize)
    with pytest.raises(DigitTokenError, match="share token ids"):
        digit_token_ids(lambda text: [7])
    with pytest.raises(DigitTokenError, match="'3' as None"):
        digit_token_ids(lambda text: None if text == "3" else [ord(text)])
    assert digit_token_ids(lambda text: None) is None  # a server without a tokenizer: matched by text


def test_turns_and_sample_score():
    messages = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "C"},
        {"role": "user", "content": "dangling"},
    ]
    assert turn_pairs(messages) == [("a\n\nb", "A"), ("c", "C")]
    assert turn_pairs(chat("only a question")) == []
    assert sample_score([2.0], [3.0]) == 6.0
    assert sample_score([2.0, 4.0], [3.0, 1.0]) == 5.0  # mean over turns (Deita sums: 10)
    with pytest.raises(ValueError):
        sample_score([1.0], [])


def test_degenerate_detection_both_ways():
    assert degenerate([3.0, 12.5, 7.1], 0, 0.02) is None
    assert degenerate([12.25] * 5, 0, 0.02) == "all 5 scores equal 12.25"
    assert degenerate([9.0, 9.0 + 1e-12], 0, 0.02).startswith("all 2 scores equal")
    assert degenerate([1.0 + i for i in range(49)], 1, 0.02) is None  # 1/50 = the limit
    assert degenerate([1.0 + i for i in range(48)], 2, 0.02) == "failure rate 4.0% (2/50) above 2.0%"
    assert degenerate([], 3, 0.5) == "failure rate 100.0% (3/3) above 50.0%"
    assert degenerate([4.2], 0, 0.02) is None and degenerate([], 0, 0.02) is None  # nothing to judge


def test_imported_per_turn_lists_from_the_raw_records():
    """The per-turn lists come out of raw JSON in DuckDB; anything that is not a list of finite
    numbers (numeric strings count, as for float()) on either side leaves both absent."""
    deita = '{{"annotation": {{"deita": {{"quality_scores": {q}, "complexity_scores": {c}}}}}}}'
    raws = [
        deita.format(q="[2.5, 1]", c='[4, "3.5", 9]'),  # complexity cut to the quality list's length
        deita.format(q='[1, "x"]', c="[3, 3]"),
        deita.format(q="[1, null]", c="[3, 3]"),
        deita.format(q="[1]", c="[1e400]"),
        deita.format(q="3", c="[3]"),
        deita.format(q="[]", c="[]"),
        '{"annotation": {"deita": {"quality_scores": [1.5]}}}',
        "not json",
        None,
    ]
    complexity, quality = deita_lists(pa.array(raws, pa.string()))
    assert quality.to_pylist() == [[2.5, 1.0], None, None, None, None, [], None, None, None]
    assert complexity.to_pylist() == [[4.0, 3.5], None, None, None, None, [], None, None, None]
    samples = pa.table({"sample_id": [f"s{i}" for i in range(len(raws))], "raw": raws, "imported_quality": [7.0] * 6 + [None] * 3})
    rows = imported_quality_rows(samples, "shard-a")
    assert rows.column("n_turns").to_pylist() == [2, None, None, None, None, None, None, None, None]  # no turn: null, not 0
    assert rows.column("status").to_pylist() == ["ok"] * 6 + ["no_annotation"] * 3


def test_histogram_markdown():
    text = histogram_markdown([1.0, 5.9, 6.0, 36.0, 40.0])
    assert "| [1, 6) | 2 |" in text and "| [31, 36] | 2 |" in text and "5 distinct values over 5 samples" in text
    assert histogram_markdown([]) == "_no scores_"


# --- prompts ------------------------------------------------------------------------------------


def test_prompts_are_deitas_templates_verbatim_and_versioned():
    deita = PROMPTS["deita-v1"]
    assert deita.complexity_prompt("Q") == (
        "You are a helpful assistant. Please identify the complexity score of the following user query. \n##Query: Q  \n##Complexity: "
    )
    assert deita.quality_prompt("Q", "R").endswith("#Question#:\nQ\n#Response#:\nR \n##Quality: ")
    assert PROMPTS["deita-chat-v1"].complexity_prompt("Q") == [{"role": "user", "content": deita.complexity_prompt("Q")}]
    judge = PROMPTS["judge-v1"].judge_messages("Q {x}", "R")
    assert judge[0]["role"] == "system" and '{"complexity": int, "quality": int}' in judge[1]["content"]
    assert "Q {x}" in judge[1]["content"]
    assert len({p.fingerprint for p in PROMPTS.values()}) == len(PROMPTS)


# --- scoring, cache, failures ---------------------------------------------------------------------


def run(samples, backend, tmp_path, name="cache", prompt="deita-v1", **kwargs):
    cache = QualityCache(tmp_path / name, backend.model_id, PROMPTS[prompt])
    labels = digit_token_ids(backend.tokenize) if PROMPTS[prompt].kind == "logprob" else None
    return score_samples(samples, backend, PROMPTS[prompt], cache, labels=labels, **kwargs)


def test_logprob_scores_use_tokenizer_ids_and_share_complexity_across_answers(tmp_path):
    same_question = [(f"dup{i}", chat("what is 2 + 2?", f"it is {i}")) for i in range(3)]
    backend = ScriptedScorerBackend()
    results, stats = run(SAMPLES + same_question + [("p", chat("no answer"))], backend, tmp_path)
    assert backend.labels_seen[0] == {d: TOKEN_OFFSET + ord(d) for d in DIGITS}
    assert stats.units == 10 * 2 + 1 + 3  # one complexity call for the three answers to one question
    ok = [r for r in results.values() if r["status"] == "ok"]
    assert len(ok) == 13 and all(1 <= r["score"] <= 36 for r in ok)
    assert all(r["score"] == pytest.approx(r["complexity"][0] * r["quality"][0]) for r in ok)
    assert len({r["score"] for r in ok}) > 5
    assert len({results[f"dup{i}"]["complexity"][0] for i in range(3)}) == 1
    assert results["p"] == results["p"] | {"status": "no_response", "score": None, "n_turns": 0}


def test_multi_turn_score_is_the_mean_over_turns(tmp_path):
    backend = ScriptedScorerBackend()
    results, _ = run([("m", chat("q1", "r1", "q2", "r2"))], backend, tmp_path)
    row = results["m"]
    assert row["n_turns"] == 2 and len(row["complexity"]) == 2
    assert row["score"] == pytest.approx((row["complexity"][0] * row["quality"][0] + row["complexity"][1] * row["quality"][1]) / 2)


def test_cache_resume_after_an_injected_crash(tmp_path):
    crashing = ScriptedScorerBackend(crash_after=3)
    with pytest.raises(RuntimeError, match="injected crash"):
        run(SAMPLES, crashing, tmp_path, batch_size=4)
    cache = QualityCache(tmp_path / "cache", "fake-scorer", PROMPTS["deita-v1"])
    saved = [row for f in cache.folder.glob("batch-*.parquet") for row in pq.read_table(f).to_pylist()]
    assert len(saved) == 8  # two finished batches of four; the batch in flight is lost
    assert not list(cache.folder.glob(".staging-*"))

    resumed_backend = ScriptedScorerBackend()
    resumed, stats = run(SAMPLES, resumed_backend, tmp_path, batch_size=4)
    assert (stats.cached, stats.scored, sum(resumed_backend.calls)) == (8, 12, 12)  # only the rest
    uninterrupted, _ = run(SAMPLES, ScriptedScorerBackend(), tmp_path, name="fresh", batch_size=4)
    assert resumed == uninterrupted
    again_backend = ScriptedScorerBackend()
    _, stats = run(SAMPLES, again_backend, tmp_path, batch_size=4)
    assert (stats.cached, again_backend.calls) == (20, [])  # all from cache: no model call


def test_failures_are_recorded_never_given_a_default_score(tmp_path):
    script = {"question 1 ": "error", "answer 2": "no_digits", "question 3 ": "error"}
    backend = ScriptedScorerBackend(script)
    results, stats = run(SAMPLES, backend, tmp_path)
    failed = {sid: r for sid, r in results.items() if r["status"] == "failed"}
    assert set(failed) == {"s1", "s2", "s3"} and stats.statuses == {"ok": 7, "failed": 3}
    assert all(r["score"] is None and r["complexity"] is None for r in failed.values())
    assert failed["s1"]["reason"] == "turn 1 complexity: " + BACKEND_ERROR
    assert failed["s2"]["reason"] == "turn 1 quality: no digit 1..6 among the first position's log-probabilities"
    assert all(r["score"] not in (3.0, 3.5, 9.0, 12.25) for r in results.values() if r["status"] == "ok")
    # deterministic failures are cached; transient backend errors are retried by the next run
    retry_backend = ScriptedScorerBackend()
    retried, stats = run(SAMPLES, retry_backend, tmp_path)
    assert stats.scored == 4  # s1 and s3: complexity and quality (both units of those turns errored)
    assert retried["s1"]["status"] == retried["s3"]["status"] == "ok" and retried["s2"]["status"] == "failed"


def test_constant_scorer_is_caught_as_degenerate(tmp_path):
    results, _ = run(SAMPLES, ScriptedScorerBackend(constant=True), tmp_path)
    scores = [r["score"] for r in results.values()]
    assert set(scores) == {12.25}  # 3.5 x 3.5: uniform over the digits
    assert degenerate(scores, 0, 0.02) == "all 10 scores equal 12.25"


# --- judge ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "status", "scores", "reason"),
    [
        ('{"complexity": 4, "quality": 5}', "ok", (4.0, 5.0), ""),
        ('```json\n{"complexity": 2, "quality": 6}\n```', "repaired", (2.0, 6.0), "code fence removed"),
        ('Sure! {"complexity": 3, "quality": "4"} hope this helps', "repaired", (3.0, 4.0), "prose around the JSON removed"),
        ('<think>hmm</think>{"complexity": 1, "quality": 1}', "repaired", (1.0, 1.0), "think block removed"),
        ('{"complexity": 4, "quality": 5, "no', "repaired", (4.0, 5.0), "truncated JSON closed"),
        ('{"complexity": 4, "quality": 5', "failed", (None, None), "no quality"),  # a cut value is not trusted
        ("not json", "failed", (None, None), "not a JSON object: 'not json'"),
        ("", "failed", (None, None), "empty output"),
        (None, "failed", (None, None), "empty output"),
        ("[4, 5]", "failed", (None, None), "not a JSON object: '[4, 5]'"),
        ('{"complexity": 4}', "failed", (None, None), "no quality in the answer"),
        ('{"complexity": 7, "quality": 5}', "failed", (None, None), "complexity 7 outside 1..6"),
        ('{"complexity": 0, "quality": 5}', "failed", (None, None), "complexity 0 outside 1..6"),
        ('{"complexity": true, "quality": 5}', "failed", (None, None), "complexity is not a number: True"),
        ('{"complexity": "high", "quality": 5}', "failed", (None, None), "complexity is not a number: 'high'"),
    ],
)
def test_judge_parse(text, status, scores, reason):
    parsed = parse_judge_output(text)
    assert (parsed.status, (parsed.complexity, parsed.quality)) == (status, scores)
    assert reason in parsed.reason


def test_judge_retries_then_records_failures(tmp_path):
    script = {
        "question 1 ": ["not json", '{"complexity": 2, "quality": 3}'],  # repaired by the retry
        "question 2 ": ["nope"],  # fails every attempt
        "question 3 ": ['{"complexity": 9, "quality": 9}'],
    }
    backend = ScriptedScorerBackend(script)
    results, stats = run(SAMPLES, backend, tmp_path, prompt="judge-v1", max_attempts=3)
    assert results["s1"]["status"] == "ok" and results["s1"]["score"] == 6.0
    assert results["s2"] == results["s2"] | {"status": "failed", "score": None, "reason": "not a JSON object: 'nope'"}
    assert results["s3"]["reason"] == "complexity 9 outside 1..6" and results["s3"]["score"] is None
    assert backend.calls == [10, 3, 2]  # everything, then the three failures, then the two still failing
    assert all(1 <= r["score"] <= 36 for r in results.values() if r["status"] == "ok")
    cache = QualityCache(tmp_path / "cache", "fake-scorer", PROMPTS["judge-v1"])
    attempts = {r["sample_id"]: r["attempts"] for f in cache.folder.glob("*.parquet") for r in pq.read_table(f).to_pylist()}
    assert (attempts["s0"], attempts["s1"], attempts["s2"]) == (1, 2, 3)


# --- the OpenAI backend's log-probability path, against a stub server ---------------------------------


class _Stub(JsonApiHandler):
    bodies: list = []

    def respond(self, path: str, body: dict):
        _Stub.bodies.append((path, body))
        if path == "/tokenize":
            return {"tokens": [100 + int(c) if c.isdigit() else 99 for c in body["prompt"]]}
        if path == "/v1/chat/completions":
            content = body["messages"][-1]["content"]
            if "broken" in content:
                return {"choices": [{"message": {"content": "3"}, "logprobs": None}]}
            top = [{"token": "4", "logprob": -0.1}, {"token": " 4", "logprob": -2.0}, {"token": "2", "logprob": -3.0}, {"token": "x", "logprob": -4.0}]
            return {"choices": [{"message": {"content": "4"}, "logprobs": {"content": [{"token": "4", "logprob": -0.1, "top_logprobs": top}]}}]}
        if path == "/v1/completions":
            return {"choices": [{"text": "5", "logprobs": {"top_logprobs": [{"5": -0.5, "6": -1.0, "hello": -2.0}]}}]}
        return None


@pytest.fixture
def stub_server():
    _Stub.bodies = []
    with json_api_server(_Stub) as url:
        yield url


def test_openai_backend_reads_first_token_logprobs(stub_server):
    backend = OpenAIBackend(base_url=stub_server, model="m", concurrency=2, max_retries=0)
    labels = digit_token_ids(backend.tokenize)
    assert labels == {d: 100 + int(d) for d in DIGITS}
    out = backend.first_token_logprobs([[{"role": "user", "content": "rate"}], "raw prompt", [{"role": "user", "content": "broken"}]], labels)
    assert out[0] == {"4": -0.1, "2": -3.0}  # exact token text: " 4" is another token
    assert out[1] == {"5": -0.5, "6": -1.0}
    assert out[2] is None  # no logprobs in the answer: an error, never a default
    assert expected_score(out[0]) == pytest.approx((4 * math.exp(-0.1) + 2 * math.exp(-3.0)) / (math.exp(-0.1) + math.exp(-3.0)))
    chat_body = next(b for p, b in _Stub.bodies if p == "/v1/chat/completions")
    assert chat_body | {"logprobs": True, "top_logprobs": 20, "max_tokens": 1, "temperature": 0.0} == chat_body
    raw_body = next(b for p, b in _Stub.bodies if p == "/v1/completions")
    assert (raw_body["prompt"], raw_body["logprobs"], raw_body["max_tokens"]) == ("raw prompt", 20, 1)


def test_openai_backend_without_a_server():
    backend = OpenAIBackend(base_url="http://127.0.0.1:9/v1", model="m", max_retries=1, backoff_s=0.01, timeout_s=2)
    assert backend.tokenize("1") is None and digit_token_ids(backend.tokenize) is None
    assert backend.first_token_logprobs(["p"], {d: -1 for d in DIGITS}) == [None]
