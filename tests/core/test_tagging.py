"""The tagging driver with a scripted backend: retries, failures never defaulted, cache, truncation."""

import pyarrow.parquet as pq

from mig_assets.core.llm.backends import Sampling
from mig_assets.core.tagging.prompts import PROMPTS
from mig_assets.core.tagging.rows import TagCache, cached_tag_rows, query_text, tag_samples
from tests.fakes import ScriptedBackend

PROMPT = PROMPTS["atomic-v1"]


def run(tmp_path, samples, backend, **kwargs):
    cache = TagCache(tmp_path / "cache", backend.model_id, PROMPT, Sampling())
    return tag_samples(samples, backend, PROMPT, cache, **kwargs), cache


def test_retries_fix_a_bad_first_answer_and_failures_keep_no_tags(tmp_path):
    backend = ScriptedBackend({"fixable": ["garbage", '{"tags": ["algebra"]}'], "hopeless": ["", "nope"]})
    (results, stats), _ = run(tmp_path, [("a", "fixable"), ("b", "hopeless"), ("c", "solve linear equations")], backend)
    assert results["a"]["status"] == "ok" and results["a"]["tags"] == ["algebra"] and results["a"]["attempts"] == 2
    assert results["b"]["status"] == "failed" and results["b"]["tags"] == [] and results["b"]["attempts"] == 3
    assert results["c"]["tags"] == ["solve skill", "linear skill"]
    assert stats.statuses == {"ok": 2, "failed": 1}
    retry_samplings = [s for _, s in backend.calls[1:]]
    assert all(s.temperature > 0 for s in retry_samplings) and len({s.seed for s in retry_samplings}) == 2
    table = cached_tag_rows(results, ["a", "b"], ["fixable", "hopeless"], "shard", "vllm", "fake-model", "atomic-v1")
    assert table.column("tags").to_pylist() == [["algebra"], []]


def test_junk_tags_are_dropped_with_their_reason_and_the_raw_answer_kept(tmp_path):
    text = "Tell me a story about a lighthouse keeper on a stormy night"
    answer = '{"tags": ["the", "lighthouse lighthouse", "list1", "a lighthouse keeper on a stormy night", "Storytelling", "Lighthouses"]}'
    (results, _), _ = run(tmp_path, [("a", text)], ScriptedBackend({text: [answer]}))
    assert results["a"]["status"] == "ok"
    row = cached_tag_rows(results, ["a"], [text], "shard", "vllm", "fake-model", "atomic-v1").to_pylist()[0]
    assert row["tags"] == ["storytelling", "lighthouse"] and row["tag_policy"] == "normalized"
    assert row["surface_tags"] == ["the", "lighthouse lighthouse", "list1", "a lighthouse keeper on a stormy night", "Storytelling", "Lighthouses"]
    assert row["dropped_tags"] == [
        {"surface": "the", "reason": "stop words only"},
        {"surface": "lighthouse lighthouse", "reason": "repeated words"},
        {"surface": "list1", "reason": "numbered placeholder"},
        {"surface": "a lighthouse keeper on a stormy night", "reason": "copied from the prompt"},
    ]


def test_cache_is_reused_and_written_batch_by_batch(tmp_path):
    samples = [(f"id{i}", f"question number {i}") for i in range(10)]
    backend = ScriptedBackend()
    (_, first), cache = run(tmp_path, samples, backend, batch_size=4)
    assert first.tagged == 10 and len(list(cache.folder.glob("batch-*.parquet"))) == 3
    again = ScriptedBackend()
    (results, second), _ = run(tmp_path, samples + [("new", "one more question")], again, batch_size=4)
    assert (second.cached, second.tagged) == (10, 1) and again.calls[0][0] == 1
    keys = [r["text_hash"] for f in cache.folder.glob("batch-*.parquet") for r in pq.read_table(f).to_pylist()]
    assert len(keys) == len(set(keys)) == 11  # no duplicates


def test_samples_sharing_a_prompt_are_tagged_once(tmp_path):
    backend = ScriptedBackend()
    samples = [("answer-by-model-a", "Explain recursion"), ("answer-by-model-b", "Explain recursion"), ("other", "Sort a list")]
    (results, stats), cache = run(tmp_path, samples, backend)
    assert stats.tagged == 2 and backend.calls[0][0] == 2
    assert results["answer-by-model-a"]["tags"] == results["answer-by-model-b"]["tags"]
    assert results["answer-by-model-b"]["sample_id"] == "answer-by-model-b"
    (_, again), _ = run(tmp_path, [("third-copy", "Explain recursion")], ScriptedBackend())
    assert (again.cached, again.tagged) == (1, 0)


def test_long_samples_are_truncated_with_a_flag(tmp_path):
    backend = ScriptedBackend()
    (results, stats), _ = run(tmp_path, [("long", "word " * 5000), ("short", "hi there")], backend, max_input_tokens=100)
    assert results["long"]["truncated"] and not results["short"]["truncated"]
    assert results["long"]["input_tokens"] == 100 and stats.truncated == 1


def test_query_text_reads_user_turns():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]
    assert query_text(messages) == "q1\n\nq2"
    assert query_text(messages, include_response=True) == "q1\n\na\n\nq2"
