"""Per-sample tag rows, whatever produced the tags; the ``imported`` backend reads annotations.

Every sample of a shard gets exactly one row with a status: ``ok`` (tags present, possibly
none after normalization), ``no_annotation`` (imported backend, the record carries no tags) or
``failed`` (a tagger could not produce valid tags; excluded downstream, never given defaults).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mig_assets.core.llm.answers import complete_with_retries
from mig_assets.core.llm.backends import LLMBackend, Sampling
from mig_assets.core.store.batch_cache import BatchCache, model_folder, text_hash
from mig_assets.core.store.parquet import read_kept_rows
from mig_assets.core.tagging.canonical import FilteredTags, filter_llm_tags
from mig_assets.core.tagging.prompts import (
    MAX_TAGS,
    ParsedTags,
    TagPrompt,
    parse_tag_output,
)

TAG_ROW_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("shard", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("surface_tags", pa.list_(pa.string())),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("backend", pa.string()),
        ("model", pa.string()),
        ("prompt_version", pa.string()),
        ("truncated", pa.bool_()),
        ("attempts", pa.int32()),
        ("tag_policy", pa.string()),  # as_written (imported annotations) or normalized (LLM tags), see core/tagging/canonical.py
        ("dropped_tags", pa.list_(pa.struct([("surface", pa.string()), ("reason", pa.string())]))),
    ]
)
# the junk filter's reasons that say a tag is bad, not merely one too many
NOT_JUNK_REASONS = frozenset({f"over the cap of {MAX_TAGS} tags"})


def imported_tag_figures(annotations: pa.ChunkedArray | pa.Array) -> dict:
    """What the ``imported`` backend's tag rows of a shard hold, from the kept samples' annotation
    column (``imported_tags``) alone: the rows themselves are not copied, the catalog reads them in
    place (:data:`~mig_assets.core.store.layout.IMPORTED_ROWS`: a sample without the column's
    list is ``no_annotation`` with no tags; the tags are the list's string items as written).

    Returns the statuses and the tags (Counters in first-seen order, as :func:`value_counter`), the
    count of samples per number of tags, and the number of surface tags (items of the lists).
    """
    flat = pc.list_flatten(annotations)
    is_tag = pc.is_valid(flat)
    owners = pc.list_parent_indices(annotations).filter(is_tag).to_numpy()
    return {
        "statuses": value_counter(pc.if_else(pc.is_valid(annotations), "ok", "no_annotation")),
        "tags": value_counter(flat.filter(is_tag)),
        "tags_per_sample": value_counter(pa.array(np.bincount(owners, minlength=len(annotations)))),
        "surface": len(flat),
    }


CACHE_SCHEMA = pa.schema(
    [
        ("text_hash", pa.string()),  # the key: SHA-256 of the text the tagger read
        ("sample_id", pa.string()),  # the first sample seen with that text
        ("tags", pa.list_(pa.string())),
        ("surface_tags", pa.list_(pa.string())),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("attempts", pa.int32()),
        ("truncated", pa.bool_()),
        ("input_tokens", pa.int64()),
        ("raw_output", pa.string()),
    ]
)


class TagCache(BatchCache):
    """Tag results per (model, prompt fingerprint, sampling), keyed by the hash of the text tagged.
    Samples that share a prompt (the same question answered by several models, exact duplicates
    across shards) are tagged once; a killed run loses at most the batch in flight."""

    def __init__(self, folder: Path, model_id: str, prompt: TagPrompt, sampling: Sampling):
        self.key = f"{prompt.version}-{prompt.fingerprint}-{sampling.key()}"
        super().__init__(model_folder(folder, model_id) / f"prompt={self.key}", "text_hash", CACHE_SCHEMA)


@dataclass(frozen=True)
class TagSettings:
    """How a tagger asks, on every path (local, Ray actors, target sets): its prompt, sampling, the
    input cut and the retries of answers that fail to parse."""

    prompt: TagPrompt
    sampling: Sampling = field(default_factory=Sampling)
    max_input_tokens: int = 1536
    max_attempts: int = 3
    retry_temperature: float = 0.7


@dataclass
class TaggingStats:
    samples: int = 0
    cached: int = 0
    tagged: int = 0
    statuses: dict = field(default_factory=dict)
    truncated: int = 0
    input_tokens: int = 0
    generate_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def samples_per_second(self) -> float:
        return self.tagged / self.seconds if self.seconds else 0.0


def query_text(messages: list[dict], include_response: bool = False) -> str:
    """What the tagger reads: the user turns (and the assistant turns on request), in order."""
    roles = ("user", "assistant") if include_response else ("user",)
    return "\n\n".join(m["content"] for m in messages if m["role"] in roles)


def tag_samples(
    samples: list[tuple[str, str]],
    backend: LLMBackend,
    prompt: TagPrompt,
    cache: TagCache,
    *,
    sampling: Sampling = Sampling(),
    max_input_tokens: int = 1536,
    batch_size: int = 256,
    max_attempts: int = 3,
    retry_temperature: float = 0.7,
    log: Callable[[str], None] = lambda message: None,
) -> tuple[dict[str, dict], TaggingStats]:
    """Tag ``(sample_id, text)`` pairs whose text is not already in ``cache``; returns every
    sample's result row (keyed by sample_id).

    Failed answers are retried up to ``max_attempts`` in all, with sampling at ``retry_temperature``
    and a per-attempt seed (greedy decoding would repeat the same answer). Results are appended to
    the cache batch by batch.
    """
    started = time.perf_counter()
    hash_of = {sample_id: text_hash(text) for sample_id, text in samples}
    texts = {hash_of[sample_id]: (sample_id, text) for sample_id, text in reversed(samples)}  # first sample wins
    by_text = cache.lookup(list(texts))
    stats = TaggingStats(samples=len(hash_of), cached=sum(h in by_text for h in hash_of.values()))
    todo = [(h, *texts[h]) for h in dict.fromkeys(hash_of.values()) if h not in by_text]

    settings = TagSettings(prompt, sampling, max_input_tokens, max_attempts, retry_temperature)

    def work(batch):
        return tag_batch(batch, backend, settings, stats)

    for _, rows in cache.fill(todo, batch_size, work):
        by_text.update((row["text_hash"], row) for row in rows)
        stats.tagged += len(rows)
        elapsed = time.perf_counter() - started
        log(f"tagged {stats.tagged:,}/{len(todo):,} new texts ({stats.tagged / elapsed:.2f} samples/s), {stats.cached:,} samples from cache")
    stats.seconds = time.perf_counter() - started
    results = {sample_id: {**by_text[h], "sample_id": sample_id} for sample_id, h in hash_of.items()}
    for row in results.values():
        stats.statuses[row["status"]] = stats.statuses.get(row["status"], 0) + 1
    return results, stats


def tag_batch(batch: list[tuple[str, str, str]], backend: LLMBackend, settings: TagSettings, stats: TaggingStats) -> list[dict]:
    """Tag one batch of (text_hash, sample_id, text); returns cache rows in batch order."""
    rows = {}
    conversations = {}
    for key, sample_id, text in batch:
        cut, truncated, n_tokens = backend.truncate(text, settings.max_input_tokens)
        stats.truncated += truncated
        stats.input_tokens += n_tokens
        conversations[key] = settings.prompt.messages(cut)
        rows[key] = {"text_hash": key, "sample_id": sample_id, "truncated": truncated, "input_tokens": n_tokens}
    clock = time.perf_counter()
    answers = complete_with_retries(
        backend,
        conversations,
        settings.prompt.schema,
        settings.sampling,
        lambda answer: parse_tag_output(answer) if answer is not None else ParsedTags("failed", [], [], "backend error"),
        max_attempts=settings.max_attempts,
        retry_temperature=settings.retry_temperature,
    )
    stats.generate_seconds += time.perf_counter() - clock
    for key, (parsed, answer, attempts) in answers.items():
        rows[key] |= {
            "tags": parsed.tags,
            "surface_tags": parsed.surface_tags,
            "status": parsed.status,
            "reason": parsed.reason,
            "attempts": attempts,
            "raw_output": answer,
        }
    return [rows[key] for key, _, _ in batch]


def llm_result_tags(result: dict, text: str) -> FilteredTags:
    """A tagging result's tags under the ``normalized`` policy, re-derived from the model's surface tags
    and the text it read: a change of normalization or junk filter applies to cached answers without
    asking the model again. A failed result keeps no tags."""
    if result["status"] == "failed":
        return FilteredTags()
    return filter_llm_tags(result["surface_tags"], text, MAX_TAGS)


def cached_tag_rows(results: dict[str, dict], sample_ids: list[str], texts: list[str], shard: str, backend: str, model: str, prompt_version: str) -> pa.Table:
    """The shard's atomic_tags table from tagging results, one row per sample in ``sample_ids`` order
    (``texts[i]``: what the tagger read for ``sample_ids[i]``)."""
    rows = []
    for sample_id, text in zip(sample_ids, texts, strict=True):
        result = results[sample_id]
        filtered = llm_result_tags(result, text)
        rows.append(
            {
                "sample_id": sample_id,
                "shard": shard,
                "tags": filtered.tags,
                "surface_tags": result["surface_tags"],
                "status": result["status"],
                "reason": result["reason"],
                "backend": backend,
                "model": model,
                "prompt_version": prompt_version,
                "truncated": result["truncated"],
                "attempts": result["attempts"],
                "tag_policy": "normalized",
                "dropped_tags": filtered.dropped,
            }
        )
    return pa.Table.from_pylist(rows, schema=TAG_ROW_SCHEMA)


def kept_text_hashes(layout, shards, include_response: bool = False) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Per shard: its raw_pool file relative to the warehouse and its kept (sample_id, text hash) pairs."""
    out = {}
    for shard in shards:
        path = layout.shard_file("raw_pool", shard)
        kept = read_kept_rows(path, ["sample_id", "messages"])
        hashes = [text_hash(query_text(m, include_response)) for m in kept.column("messages").to_pylist()]
        out[shard] = (path.relative_to(layout.warehouse_dir).as_posix(), list(zip(kept.column("sample_id").to_pylist(), hashes)))
    return out


def value_counter(values: pa.ChunkedArray | pa.Array) -> Counter:
    """A Counter of ``values`` (Arrow's value_counts, a hash count), its keys in the order they first
    appear: as a Counter fed the values one by one, so most_common breaks ties the same way."""
    counts = pc.value_counts(values)
    return Counter(dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())))
