"""What the Ray cluster runs: the read stage that keeps the planned rows, and the actors that hold
one model each (a vLLM engine or a sentence-transformers encoder) and turn each batch into one
cache batch file, named by its contents, with the local batch code. ray itself is not imported:
these are plain classes that Ray Data instantiates on the workers."""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from mig_assets.core.embedding.encoder import vectors_to_arrow
from mig_assets.core.execution.storage import PART_PREFIX, exists, open_uri, write_table_atomic
from mig_assets.core.llm.backends import LLMBackend
from mig_assets.core.store.batch_cache import text_hash
from mig_assets.core.tagging.rows import CACHE_SCHEMA, TaggingStats, TagSettings, query_text, tag_batch

BATCH_STATS_SCHEMA = pa.schema(
    [
        ("batch", pa.string()),
        ("actor", pa.string()),
        ("rows", pa.int64()),
        ("skipped", pa.bool_()),  # already written by an earlier attempt of the same task
        ("seconds", pa.float64()),
        ("load_seconds", pa.float64()),
        ("truncated", pa.int64()),
        ("input_tokens", pa.int64()),
        ("generate_seconds", pa.float64()),
    ]
)


def select_planned(batch: pa.Table, planned: set[str], include_response: bool) -> pa.Table:
    """Read stage: the planned rows of the shard as (text_hash, sample_id, text)."""
    rows = [
        (sample_id, query_text(messages, include_response))
        for sample_id, messages in zip(batch.column("sample_id").to_pylist(), batch.column("messages").to_pylist())
        if sample_id in planned
    ]
    return pa.table(
        {
            "text_hash": pa.array([text_hash(text) for _, text in rows], pa.string()),
            "sample_id": pa.array([sample_id for sample_id, _ in rows], pa.string()),
            "text": pa.array([text for _, text in rows], pa.string()),
        }
    )


class _CacheActor:
    """One model per actor, loaded once in ``__init__``; each batch becomes one cache file.

    A batch whose file exists was finished by an earlier attempt of the same (retried) task: it is
    skipped, so a killed actor costs the batch in flight and never duplicates a row.
    """

    def __init__(self, cache_uri: str, run_uri: str):
        self.filesystem, self.cache_path = open_uri(cache_uri)
        _, self.run_path = open_uri(run_uri)
        self.actor = f"{socket.gethostname()}:{os.getpid()}"
        started = time.perf_counter()
        self.load()
        self.load_seconds = time.perf_counter() - started
        self._touch(f"actor-{uuid.uuid4().hex}")

    def load(self) -> None:
        raise NotImplementedError

    def process(self, batch: pa.Table) -> tuple[pa.Table, dict]:
        """The cache rows of ``batch`` and figures (truncated, input_tokens, generate_seconds)."""
        raise NotImplementedError

    def _touch(self, name: str) -> None:
        self.filesystem.create_dir(self.run_path, recursive=True)
        with self.filesystem.open_output_stream(f"{self.run_path}/{name}") as out:
            out.write(self.actor.encode())

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        hashes = batch.column("text_hash").to_pylist()
        key = hashlib.sha256("".join(hashes).encode()).hexdigest()[:32]
        path = f"{self.cache_path}/{PART_PREFIX}{key}.parquet"
        figures = {"truncated": 0, "input_tokens": 0, "generate_seconds": 0.0}
        skipped = exists(self.filesystem, path)
        if skipped:
            done = pq.read_table(path, filesystem=self.filesystem)
            if "truncated" in done.column_names:
                figures["truncated"] = sum(done.column("truncated").to_pylist())
                figures["input_tokens"] = sum(done.column("input_tokens").to_pylist())
        else:
            self._touch(f"attempt-{key}-{uuid.uuid4().hex}")
            table, figures = self.process(batch)
            write_table_atomic(self.filesystem, path, table)
        seconds = time.perf_counter() - started
        print(f"batch {key[:8]}: {batch.num_rows} rows {'already written' if skipped else f'in {seconds:.2f}s'}", flush=True)
        return pa.Table.from_pylist(
            [
                {
                    "batch": key,
                    "actor": self.actor,
                    "rows": batch.num_rows,
                    "skipped": skipped,
                    "seconds": seconds,
                    "load_seconds": self.load_seconds,
                    **figures,
                }
            ],
            schema=BATCH_STATS_SCHEMA,
        )


class TagActor(_CacheActor):
    """Holds one LLM backend (the vLLM engine is created once, here) and tags batches with the
    local code (``tag_batch``: truncation, structured output, retries of failed answers)."""

    def __init__(self, cache_uri, run_uri, backend_factory: Callable[[], LLMBackend], tagging: TagSettings):
        self.backend_factory, self.tagging = backend_factory, tagging
        super().__init__(cache_uri, run_uri)

    def load(self) -> None:
        self.backend = self.backend_factory()
        if hasattr(self.backend, "engine"):
            self.backend.engine()

    def process(self, batch):
        stats = TaggingStats()
        work = list(zip(batch.column("text_hash").to_pylist(), batch.column("sample_id").to_pylist(), batch.column("text").to_pylist()))
        rows = tag_batch(work, self.backend, self.tagging, stats)
        figures = {"truncated": stats.truncated, "input_tokens": stats.input_tokens, "generate_seconds": stats.generate_seconds}
        return pa.Table.from_pylist(rows, schema=CACHE_SCHEMA), figures


class EmbedActor(_CacheActor):
    """Holds one sentence-transformers model and embeds batches into embedding cache files."""

    def __init__(self, cache_uri, run_uri, model: str, device: str, encode_batch_size: int):
        self.model, self.device, self.encode_batch_size = model, device, encode_batch_size
        super().__init__(cache_uri, run_uri)

    def load(self) -> None:
        from mig_assets.core.embedding.encoder import SentenceEmbedder

        self.embedder = SentenceEmbedder(self.model, self.device, self.encode_batch_size)
        self.embedder.dimension  # loads the model

    def process(self, batch):
        clock = time.perf_counter()
        vectors = self.embedder.encode(batch.column("text").to_pylist())
        table = pa.table({"text_hash": batch.column("text_hash"), "embedding": vectors_to_arrow(vectors)})
        return table, {"truncated": 0, "input_tokens": 0, "generate_seconds": time.perf_counter() - clock}
