"""The decontamination functions on their own: normalization, the n-gram measure, exact matches,
the embedding method, clean samples sharing common phrases, and the exclusion of flagged samples."""

import json

import numpy as np
import pyarrow as pa
import pytest

from mig_assets.core.curation.decontamination import (
    BenchmarkError,
    BenchmarkIndex,
    BenchmarkItem,
    DecontaminationConfig,
    check_shard,
    embedding_matches,
    messages_array,
    ngram_hashes,
    normalized_words,
    read_benchmark,
)
from mig_assets.core.curation.exclusions import Exclusions
from mig_assets.core.selection.inputs import PoolArrays
from tests.conftest import REAL_DATA

QUESTION = "Explain the difference between supervised and unsupervised learning, and give two real world examples of each approach."
ITEMS = [
    BenchmarkItem("bench.jsonl", 1, (("user", QUESTION),)),
    BenchmarkItem("bench.jsonl", 2, (("user", "What is the capital of France?"),)),  # shorter than 8 words: exact only
    BenchmarkItem("other.jsonl", 7, (("user", "Write a haiku about autumn leaves falling in a quiet mountain village at dusk."),)),
]


def check(samples: dict[str, str], items=ITEMS, **config) -> list[dict]:
    index = BenchmarkIndex(list(items), config.pop("ngram", 8))
    table = check_shard(
        index,
        pa.array(list(samples)),
        messages_array([[("user", text)] for text in samples.values()]),
        DecontaminationConfig(benchmarks=(), **config),
    )
    return table.to_pylist()


def test_normalization_folds_case_whitespace_punctuation_and_width():
    words, offsets = normalized_words(messages_array([[("user", "Hello,   WORLD!! ＡＢＣ"), ("assistant", "ignored"), ("user", "it's\tfine")]]))
    assert words.to_pylist() == ["hello", "world", "abc", "it", "s", "fine"] and offsets.tolist() == [0, 6]


def test_chinese_and_japanese_characters_are_words_of_their_own():
    words, _ = normalized_words(messages_array([[("user", "接下来，体验 Hello ヤンキー")]]))
    assert words.to_pylist() == ["接", "下", "来", "体", "验", "hello", "ヤ", "ン", "キ", "ー"]
    item = BenchmarkItem("zh.jsonl", 3, (("user", "书写她成为角斗士前的过往。"),))
    [row] = check({"zh": "请帮我：书写她成为角斗士前的过往，谢谢"}, items=[item])
    assert (row["benchmark_line"], row["method"], row["score"]) == (3, "ngram", 1.0)


def test_ngram_hashes_stay_inside_one_conversation_and_skip_unknown_words():
    ids = np.array([0, 1, 2, 3, 4, -1, 5, 6], dtype=np.int64)
    offsets = np.array([0, 3, 8], dtype=np.int64)
    hashes, owner, start = ngram_hashes(ids, offsets, 2)
    # conversation 0: (0,1) (1,2); conversation 1: (3,4) (5,6) -- not (2,3) across the boundary, nothing with -1
    assert owner.tolist() == [0, 0, 1, 1] and start.tolist() == [0, 1, 0, 3]
    assert len(set(hashes.tolist())) == 4


def test_planted_copies_are_found_with_the_item_and_score():
    rows = check(
        {
            "exact": QUESTION,
            "noisy": "  EXPLAIN the difference between supervised, and unsupervised learning -- and give TWO real-world examples of each approach!!! ",
            "inside": "I have an exam tomorrow. " + QUESTION + " Please keep it short, I only have ten minutes to read it.",
            "short": "what is the capital of france",
            "clean": "Explain the difference between a list and a tuple in Python.",
        }
    )
    by_sample = {}
    for row in rows:
        by_sample.setdefault(row["sample_id"], []).append(row)
    assert set(by_sample) == {"exact", "noisy", "inside", "short"}
    assert {(r["method"], r["score"]) for r in by_sample["exact"]} == {("exact", 1.0), ("ngram", 1.0)}
    assert [(r["method"], r["score"]) for r in by_sample["noisy"]] == [("exact", 1.0), ("ngram", 1.0)]
    assert [(r["method"], r["benchmark_line"], r["score"]) for r in by_sample["inside"]] == [("ngram", 1, 1.0)]
    assert [(r["method"], r["benchmark_line"]) for r in by_sample["short"]] == [("exact", 2)]


def test_the_score_is_the_share_of_the_items_words_covered_by_shared_ngrams():
    words = QUESTION.split()  # 17 words
    first_nine = " ".join(words[:9])  # two shared 8-grams (starts 0 and 1) cover 9 words
    rows = check({"part": first_nine + " and then something else entirely different here"}, threshold=0.0)
    [row] = [r for r in rows if r["benchmark_line"] == 1]
    assert row["score"] == pytest.approx(9 / 17)
    sixteen = [BenchmarkItem("b.jsonl", 1, (("user", " ".join(f"w{i}" for i in range(16))),))]
    half = " ".join(f"w{i}" for i in range(8))
    assert check({"half": half}, items=sixteen, threshold=0.0)[0]["score"] == 0.5
    assert check({"half": half}, items=sixteen, threshold=0.5) == []  # 0.5 is not > 0.5: Tulu 3's strict threshold


def test_clean_samples_sharing_common_phrases_are_not_flagged():
    common = {
        "a": "Explain the difference between a virus and a bacterium in simple words for a child.",
        "b": "Give two real world examples of each approach you would take to reduce stress at work.",
        "c": "Write a haiku about the sea.",
        "d": "What is the capital of Spain?",
    }
    assert check(common) == []


def test_alpaca_eval_against_mt_bench_flags_almost_nothing():
    """The false-positive measure on real data: AlpacaEval prompts are not MT-Bench questions."""
    from mig_assets.core.curation.shard_check import check_raw_pool_table

    index = BenchmarkIndex(read_benchmark(REAL_DATA / "mt_bench_questions.jsonl"))
    pool = read_benchmark(REAL_DATA / "alpaca_eval_outputs.json")
    from mig_assets.core.ingest.records import sample_id

    table = pa.table({"sample_id": [sample_id(list(item.messages)) for item in pool], "messages": messages_array([item.messages for item in pool])})
    rows, checked = check_raw_pool_table(index, table, DecontaminationConfig(benchmarks=()))
    flagged = set(rows.column("sample_id").to_pylist())
    assert checked == len({sample_id(list(i.messages)) for i in pool}) > 700
    assert len(flagged) / checked < 0.01


def test_benchmark_records_keep_file_and_line_and_a_bad_one_names_them(tmp_path):
    items = read_benchmark(REAL_DATA / "mt_bench_questions.jsonl")
    assert len(items) == 80 and items[4].line == 5 and items[4].file.endswith("mt_bench_questions.jsonl")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"prompt": "fine question"}) + "\n" + json.dumps({"prompt": 3}) + "\n")
    with pytest.raises(BenchmarkError, match=r"broken.jsonl:2: prompt"):
        read_benchmark(broken)


def test_embedding_method_flags_vectors_above_the_cosine_threshold():
    index = BenchmarkIndex(list(ITEMS))
    items = np.eye(3, 4, dtype=np.float32)
    samples = np.array([[0.95, 0.31, 0, 0], [0, 0, 0, 1]], dtype=np.float32)
    rows = embedding_matches(index, ["para", "far"], samples / np.linalg.norm(samples, axis=1, keepdims=True), items, 0.9).to_pylist()
    assert [(r["sample_id"], r["benchmark_line"], r["method"]) for r in rows] == [("para", 1, "embedding")]
    assert rows[0]["score"] == pytest.approx(0.95 / np.hypot(0.95, 0.31), rel=1e-6)


def test_fingerprint_changes_with_benchmark_bytes_and_thresholds(tmp_path):
    bench = tmp_path / "b.jsonl"
    bench.write_text('{"prompt": "a question"}\n')
    config = DecontaminationConfig(benchmarks=(str(bench),))
    before = config.fingerprint()
    assert DecontaminationConfig(benchmarks=(str(bench),), threshold=0.6).fingerprint() != before
    bench.write_text('{"prompt": "another question"}\n')
    assert config.fingerprint() != before and config.record()["benchmarks"][0]["sha256"] != "missing"


def test_excluded_samples_leave_the_pool_in_order():
    pool = PoolArrays(["a", "b", "c"], [["x"], ["y"], ["z"]], np.array([1.0, 2.0, 3.0]), np.array([1, 2, 3]), np.eye(3, dtype=np.float32))
    exclusions = Exclusions(rows=[{"sample_id": "b", "reason": "contaminated"}])
    kept = pool.without(exclusions.excluded_ids)
    assert kept.sample_ids == ["a", "c"] and kept.tags == [["x"], ["z"]] and kept.scores.tolist() == [1.0, 3.0]
    assert kept.embeddings.tolist() == [[1, 0, 0], [0, 0, 1]]
