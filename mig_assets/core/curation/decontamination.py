"""Benchmark decontamination: which pool samples overlap an evaluation benchmark, and by how much.

Plain functions, no Dagster import. The benchmark items are indexed once (:class:`BenchmarkIndex`);
each shard is then streamed through it with vectorized Arrow/numpy code, so memory is bounded by
the shard. Three methods, each giving rows (sample_id, benchmark_file, benchmark_line, method, score):

- ``ngram`` (Tulu 3's measure, allenai/open-instruct ``decontamination/search.py``): the score of a
  (sample, item) pair is the share of the item's words that lie inside some word n-gram of the item
  which also occurs in the sample; flagged when the score is > ``threshold``. Items shorter than
  ``n`` words have no n-gram and are left to the exact method, as in Tulu 3.
- ``exact``: the sample's normalized user text equals the item's, or one of the item's user turns
  (score 1).
- ``embedding`` (optional, for paraphrases): cosine of the sample's embedding and the item's,
  flagged when >= ``embedding_threshold``.

Text is what the tagger reads (the user turns, in order); normalization is NFKC, lower case, every
run of characters that are neither letters nor digits turned into one space, then split on spaces:
case, whitespace and punctuation changes do not hide a copy. Chinese and Japanese characters are
words of their own (those scripts put no spaces between words; a sentence would be one "word").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mig_assets.core.ingest.columns import MESSAGE_TYPE
from mig_assets.core.ingest.readers import ReadStats, read_records
from mig_assets.core.ingest.records import RecordError, canonicalize

DEFAULT_NGRAM = 8  # Tulu 3: --ngram_size 8
DEFAULT_THRESHOLD = 0.5  # Tulu 3: --match_threshold 0.5 (flagged when the score is > 0.5)
DEFAULT_EMBEDDING_THRESHOLD = 0.85  # ours: measured on paraphrases and AlpacaEval vs MT-Bench (docs/decontamination.md)
METHODS = ("ngram", "exact", "embedding")
DEFAULT_METHODS = ("ngram", "exact")
CODE_VERSION = "1"  # of the matching code below: part of every fingerprint
CONTAMINATION_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("benchmark_file", pa.string()),
        ("benchmark_line", pa.int64()),
        ("method", pa.string()),
        ("score", pa.float64()),
    ]
)
_NOT_WORD = r"[^\p{L}\p{N}]+"
_UNSPACED_SCRIPT = r"([\p{Han}\p{Hiragana}\p{Katakana}])"  # written without spaces: each character is a word
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the polynomial n-gram hash


class BenchmarkError(ValueError):
    """A benchmark file or record that cannot be used; the message names the file, line and field."""


@dataclass(frozen=True)
class BenchmarkItem:
    file: str  # the path as registered (absolute)
    line: int  # 1-based line (row for Parquet) of the record
    messages: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class DecontaminationConfig:
    """What a check depends on: the benchmark files, the methods and their parameters."""

    benchmarks: tuple[str, ...]
    methods: tuple[str, ...] = DEFAULT_METHODS
    ngram: int = DEFAULT_NGRAM
    threshold: float = DEFAULT_THRESHOLD
    embedding_threshold: float = DEFAULT_EMBEDDING_THRESHOLD

    def record(self) -> dict:
        """The config with each benchmark file's SHA-256 (what manifests and materializations record)."""
        return {
            "benchmarks": [{"file": f, "sha256": file_sha256_or_missing(f)} for f in self.benchmarks],
            "methods": list(self.methods),
            "ngram": self.ngram,
            "threshold": self.threshold,
            "embedding_threshold": self.embedding_threshold,
            "code_version": CODE_VERSION,
        }

    def fingerprint(self) -> str:
        """Changes with any benchmark file's bytes, the methods or a threshold: a new fingerprint re-checks every shard."""
        return hashlib.sha256(json.dumps(self.record(), sort_keys=True).encode()).hexdigest()[:16]


def file_sha256_or_missing(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        return "missing"
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_benchmark(path: str | Path) -> list[BenchmarkItem]:
    """Every item of a benchmark file, read by the pool's readers (any pool format); a record that
    cannot be read is an error naming the file, line and field (a silently skipped item would be
    an undetected leak)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"{path}: benchmark file not found")
    items = []
    for record in read_records(path, ReadStats()):
        if record.error is not None:
            raise BenchmarkError(f"{path}:{record.line_no}: {record.error.field}: {record.error.reason}")
        try:
            canonical = canonicalize(record.value)
        except RecordError as exc:
            raise BenchmarkError(f"{path}:{record.line_no}: {exc.field}: {exc.reason}") from None
        items.append(BenchmarkItem(str(path), record.line_no, tuple(canonical.messages)))
    return items


def messages_array(messages: list) -> pa.ListArray:
    """Conversations as the raw_pool ``messages`` column type: list<struct<role, content>>."""
    return pa.array([[{"role": r, "content": c} for r, c in m] for m in messages], pa.list_(MESSAGE_TYPE))


def normalized_words(messages: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, np.ndarray]:
    """The normalized words of each conversation's user turns: (words, offsets), conversation i's
    words being ``words[offsets[i]:offsets[i + 1]]``. Vectorized over the whole column."""
    if isinstance(messages, pa.ChunkedArray):
        messages = messages.combine_chunks()
    n = len(messages)
    turns = pc.list_flatten(messages)
    parent = pc.list_parent_indices(messages).to_numpy()
    user = pc.equal(turns.field("role"), "user").to_numpy(zero_copy_only=False)
    contents = pc.filter(turns.field("content"), pa.array(user))
    parent = parent[user]
    text = pc.replace_substring_regex(pc.utf8_lower(pc.utf8_normalize(contents, form="NFKC")), _NOT_WORD, " ")
    text = pc.utf8_trim_whitespace(pc.replace_substring_regex(text, _UNSPACED_SCRIPT, r" \1 "))
    per_turn = pc.utf8_split_whitespace(text)
    words = pc.list_flatten(per_turn)
    counts = pc.list_value_length(per_turn).to_numpy(zero_copy_only=False).astype(np.int64)
    per_sample = np.bincount(parent, weights=counts, minlength=n).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(per_sample)]).astype(np.int64)
    return words, offsets


def joined_text(words: pa.Array, offsets: np.ndarray) -> pa.Array:
    """Each conversation's normalized words joined by single spaces: the key of the exact method."""
    return pc.binary_join(pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), words), " ")


def ngram_hashes(ids: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """64-bit hashes of every word n-gram that lies inside one conversation and has only known words
    (id >= 0): (hash, conversation, start position within it). h = sum_k (id_{i+k} + 1) * M^k mod 2^64."""
    total = len(ids)
    if total < n:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    windows = total - n + 1
    starts = np.arange(windows, dtype=np.int64)
    owner = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    unknown = np.concatenate([[0], np.cumsum(ids < 0)])
    valid = (offsets[owner[:windows] + 1] >= starts + n) & (unknown[starts + n] == unknown[starts])
    shifted = ids.astype(np.uint64) + np.uint64(1)
    hashes = np.zeros(windows, np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            hashes = hashes * _MIX + shifted[k : k + windows]
    starts = starts[valid]
    return hashes[valid], owner[starts], starts - offsets[owner[starts]]


class BenchmarkIndex:
    """Every benchmark item's normalized words, n-gram hashes (sorted, with item and position) and
    normalized text: built once, then queried with one shard at a time."""

    def __init__(self, items: list[BenchmarkItem], ngram: int = DEFAULT_NGRAM):
        if ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {ngram}")
        self.items, self.ngram = items, ngram
        words, offsets = normalized_words(messages_array([item.messages for item in items]))
        self.vocabulary = pc.unique(words)
        self.lengths = np.diff(offsets)
        ids = pc.index_in(words, value_set=self.vocabulary).to_numpy(zero_copy_only=False).astype(np.int64)
        hashes, item, position = ngram_hashes(ids, offsets, ngram)
        order = np.argsort(hashes, kind="stable")
        self.gram_hash, self.gram_item, self.gram_position = hashes[order], item[order], position[order]
        # exact keys: an item's whole user text, and each of its user turns (MT-Bench's first turn alone is a prompt)
        turn_owner = [i for i, item in enumerate(items) for role, _ in item.messages if role == "user"]
        turns = [[(role, content)] for item in items for role, content in item.messages if role == "user"]
        turn_words, turn_offsets = normalized_words(messages_array(turns))
        keyed = zip(joined_text(words, offsets).to_pylist() + joined_text(turn_words, turn_offsets).to_pylist(), list(range(len(items))) + turn_owner)
        self.items_of_text: dict[str, list[int]] = {}
        for text, i in keyed:
            if text and i not in self.items_of_text.get(text, []):
                self.items_of_text.setdefault(text, []).append(i)
        self.text_keys = list(self.items_of_text)
        self.texts = pa.array(self.text_keys, pa.string())

    @classmethod
    def from_files(cls, files: list[str], ngram: int = DEFAULT_NGRAM) -> "BenchmarkIndex":
        return cls([item for path in files for item in read_benchmark(path)], ngram)

    def ngram_matches(self, sample_ids: np.ndarray, words: pa.Array, offsets: np.ndarray, threshold: float) -> pa.Table:
        """(sample, item) pairs whose n-gram coverage of the item is > ``threshold``."""
        ids = pc.index_in(words, value_set=self.vocabulary).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        hashes, owner, _ = ngram_hashes(ids, offsets, self.ngram)
        hit = np.isin(hashes, self.gram_hash)
        pairs = np.unique(np.stack([owner[hit], hashes[hit].view(np.int64)], axis=1), axis=0) if hit.any() else np.zeros((0, 2), np.int64)
        left = np.searchsorted(self.gram_hash, pairs[:, 1].view(np.uint64), "left")
        right = np.searchsorted(self.gram_hash, pairs[:, 1].view(np.uint64), "right")
        counts = right - left
        entries = np.repeat(np.arange(len(pairs)), counts)
        # each pair's index rows left..right-1, without a Python loop
        index_rows = left[entries] + np.arange(len(entries)) - np.repeat(np.cumsum(counts) - counts, counts)
        sample = pairs[entries, 0]
        item, position = self.gram_item[index_rows], self.gram_position[index_rows]
        triples = np.unique(np.stack([sample, item, position], axis=1), axis=0) if len(sample) else np.zeros((0, 3), np.int64)
        if not len(triples):
            return _rows([], [], [], "ngram", [])
        sample, item, position = triples[:, 0], triples[:, 1], triples[:, 2]
        # words of the item covered: n-grams at sorted starts p cover min(n, next start - p) new words each
        group_start = np.flatnonzero(np.concatenate([[True], (sample[1:] != sample[:-1]) | (item[1:] != item[:-1])]))
        next_position = np.append(position[1:], 0)
        last_in_group = np.append(group_start[1:] - 1, len(triples) - 1)
        step = np.minimum(self.ngram, next_position - position)
        step[last_in_group] = self.ngram
        covered = np.add.reduceat(step, group_start)
        g_sample, g_item = sample[group_start], item[group_start]
        score = covered / self.lengths[g_item]
        keep = score > threshold
        return _rows(sample_ids[g_sample[keep]], *self._where(g_item[keep]), "ngram", score[keep])

    def exact_matches(self, sample_ids: np.ndarray, words: pa.Array, offsets: np.ndarray) -> pa.Table:
        """Samples whose normalized user text equals an item's, or one of its user turns."""
        texts = joined_text(words, offsets)
        position = pc.index_in(texts, value_set=self.texts)
        hit = np.flatnonzero(pc.is_valid(position).to_numpy(zero_copy_only=False))
        position = position.fill_null(0).to_numpy(zero_copy_only=False)
        samples, items = [], []
        for row in hit:
            for item in self.items_of_text[self.text_keys[position[row]]]:
                samples.append(row)
                items.append(item)
        return _rows(sample_ids[np.asarray(samples, np.int64)], *self._where(np.asarray(items, np.int64)), "exact", np.ones(len(samples)))

    def _where(self, items: np.ndarray) -> tuple[list[str], list[int]]:
        return [self.items[i].file for i in items], [self.items[i].line for i in items]

    def embedding_units(self) -> tuple[list[str], np.ndarray]:
        """What the embedding method compares a sample with, and the item of each: every item's user
        text (turns joined by a blank line, as the pool's embeddings read samples) and, for an item of
        several user turns, each turn alone (a sample may hold only MT-Bench's first turn)."""
        texts, owners = [], []
        for i, item in enumerate(self.items):
            turns = [c for r, c in item.messages if r == "user"]
            for text in ["\n\n".join(turns), *(turns if len(turns) > 1 else [])]:
                texts.append(text)
                owners.append(i)
        return texts, np.asarray(owners, np.int64)


def check_shard(
    index: BenchmarkIndex,
    sample_ids: pa.Array | pa.ChunkedArray,
    messages: pa.Array | pa.ChunkedArray,
    config: DecontaminationConfig,
) -> pa.Table:
    """Rows of :data:`CONTAMINATION_SCHEMA` for one shard's samples, by the config's text methods
    (n-gram, exact), sorted by sample, file, line and method: the same shard gives the same bytes."""
    ids = np.asarray(pc.cast(sample_ids, pa.string()).to_pylist(), dtype=object)
    words, offsets = normalized_words(messages)
    tables = []
    if "ngram" in config.methods:
        tables.append(index.ngram_matches(ids, words, offsets, config.threshold))
    if "exact" in config.methods:
        tables.append(index.exact_matches(ids, words, offsets))
    return sort_rows(pa.concat_tables(tables) if tables else _rows([], [], [], "", []))


def embedding_matches(
    index: BenchmarkIndex,
    sample_ids: list[str],
    sample_vectors: np.ndarray,
    unit_vectors: np.ndarray,
    threshold: float = DEFAULT_EMBEDDING_THRESHOLD,
    batch: int = 8192,
) -> pa.Table:
    """(sample, item) pairs whose best cosine over the item's :meth:`BenchmarkIndex.embedding_units`
    (unit vectors, in that order) is >= ``threshold``; samples in blocks of ``batch``."""
    _, owners = index.embedding_units()
    samples, items, scores = [], [], []
    for start in range(0, len(sample_ids), batch):
        cosine = sample_vectors[start : start + batch] @ unit_vectors.T
        rows, cols = np.nonzero(cosine >= threshold)
        samples.append(rows + start)
        items.append(owners[cols])
        scores.append(cosine[rows, cols].astype(np.float64))
    rows = np.concatenate(samples) if samples else np.zeros(0, np.int64)
    cols = np.concatenate(items) if items else np.zeros(0, np.int64)
    score = np.concatenate(scores) if scores else np.zeros(0)
    best = np.lexsort((-score, cols, rows))  # per (sample, item): the best unit first
    rows, cols, score = rows[best], cols[best], score[best]
    first = np.concatenate([[True], (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])]) if len(rows) else np.zeros(0, bool)
    ids = np.asarray(sample_ids, dtype=object)
    return sort_rows(_rows(ids[rows[first]], *index._where(cols[first]), "embedding", score[first]))


def sort_rows(table: pa.Table) -> pa.Table:
    keys = [("sample_id", "ascending"), ("benchmark_file", "ascending"), ("benchmark_line", "ascending"), ("method", "ascending")]
    return table.sort_by(keys)


def _rows(sample_ids, files, lines, method: str, scores) -> pa.Table:
    return pa.table(
        {
            "sample_id": pa.array(list(sample_ids), pa.string()),
            "benchmark_file": pa.array(list(files), pa.string()),
            "benchmark_line": pa.array(list(lines), pa.int64()),
            "method": pa.array([method] * len(files), pa.string()),
            "score": pa.array(np.asarray(scores, np.float64), pa.float64()),
        },
        schema=CONTAMINATION_SCHEMA,
    )


def flagged_per_file(table: pa.Table, benchmarks: list[str]) -> dict[str, int]:
    """Distinct flagged samples per benchmark file (every registered file listed, 0 when clean)."""
    counts = dict.fromkeys(benchmarks, 0)
    for file, ids in _group_ids(table).items():
        counts[file] = counts.get(file, 0) + len(ids)
    return counts


def _group_ids(table: pa.Table) -> dict[str, set[str]]:
    groups: dict[str, set[str]] = {}
    for file, sid in zip(table.column("benchmark_file").to_pylist(), table.column("sample_id").to_pylist()):
        groups.setdefault(file, set()).add(sid)
    return groups
