"""Tagging and embedding a shard on a Ray cluster: Ray Data over the shard's Parquet, a pool of
actors that each hold one model (a vLLM engine or a sentence-transformers encoder), results written
as cache batch files through pyarrow filesystems. No Dagster import; ray is imported lazily.

The split of work:

- the driver (the Dagster step) plans: it hashes the shard's texts and asks the local cache which
  are done, exactly as local execution does, so the same samples are sent and the first sample of
  each text wins in both modes;
- the cluster works: read tasks read the shard's Parquet (a local path, or an object store URI for
  workers on other machines), keep the planned rows, and the actors tag or embed them in batches of
  ``batch_size`` (the same batches as local execution when the batch sizes match) and write each
  batch's cache file atomically under a name derived from its contents;
- the driver assembles: it copies the new cache files back (when the storage is remote), reads
  every answer from the cache and builds the shard's output with the local code.

Faults: Ray Data restarts a dead actor (``max_restarts``) and retries its task
(``max_task_retries``). A retried task meets the batches it already finished as existing files and
skips them, so a batch is written once (its file name is a hash of its texts) and nothing is lost:
after the run every planned text must be in the cache, or the step fails.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from mig_assets.core.embedding.encoder import EmbeddingCache, text_hash, vectors_to_arrow
from mig_assets.core.llm.backends import LLMBackend, Sampling
from mig_assets.core.tagging.prompts import TagPrompt
from mig_assets.core.tagging.rows import (
    CACHE_SCHEMA,
    TagCache,
    TaggingStats,
    query_text,
    tag_batch,
)

PART_PREFIX = "batch-ray-"
RUNS_FOLDER = "_ray_runs"  # per-pipeline markers (actor starts, batch attempts), removed after the run
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


# ---------------------------------------------------------------------------------------------
# storage: the warehouse as the workers see it


def open_uri(uri: str):
    """``(filesystem, path)`` for a local path or a URI pyarrow knows (file://, s3://, gs://, hdfs://)."""
    from pyarrow import fs

    if "://" not in uri:
        return fs.LocalFileSystem(), str(Path(uri).resolve())
    return fs.FileSystem.from_uri(uri)


def join_uri(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


def write_table_atomic(filesystem, path: str, table: pa.Table) -> None:
    """Write a Parquet file through a staging name and a move: readers never see half a file."""
    folder, name = path.rsplit("/", 1)
    filesystem.create_dir(folder, recursive=True)
    staging = f"{folder}/.staging-{uuid.uuid4().hex}-{name}"
    pq.write_table(table, staging, filesystem=filesystem, compression="zstd")
    filesystem.move(staging, path)


def _exists(filesystem, path: str) -> bool:
    from pyarrow import fs

    return filesystem.get_file_info(path).type != fs.FileType.NotFound


@dataclass(frozen=True)
class Storage:
    """The local warehouse folder and the URI of the same warehouse for the workers.

    ``uri`` empty (or the same folder) means the workers read and write the local folder directly
    (one machine, or a shared mount at the same path). Otherwise it is a mirror: the shard's
    Parquet is copied up before the run and new cache files are copied back after it.
    """

    local_root: str
    uri: str = ""

    @property
    def root(self) -> str:
        return self.uri or self.local_root

    @property
    def remote(self) -> bool:
        if not self.uri:
            return False
        filesystem, path = open_uri(self.uri)
        from pyarrow import fs

        return not (isinstance(filesystem, fs.LocalFileSystem) and Path(path) == Path(self.local_root).resolve())

    def put(self, relative: str) -> None:
        """Copy one warehouse file to the workers' storage (a no-op when they share the folder)."""
        if not self.remote:
            return
        filesystem, root = open_uri(self.uri)
        table = pq.read_table(Path(self.local_root) / relative)
        write_table_atomic(filesystem, join_uri(root, relative), table)

    def fetch_parts(self, relative_folder: str) -> int:
        """Copy the workers' cache files of ``relative_folder`` that the local folder lacks; returns how many."""
        if not self.remote:
            return 0
        from pyarrow import fs

        filesystem, root = open_uri(self.uri)
        infos = filesystem.get_file_info(fs.FileSelector(join_uri(root, relative_folder), allow_not_found=True))
        local = Path(self.local_root) / relative_folder
        copied = 0
        for info in infos:
            if info.type != fs.FileType.File or not info.base_name.startswith(PART_PREFIX) or (local / info.base_name).exists():
                continue
            local.mkdir(parents=True, exist_ok=True)
            staging = local / f".staging-{os.getpid()}-{info.base_name}"
            with filesystem.open_input_stream(info.path) as source, open(staging, "wb") as target:
                while chunk := source.read(1 << 20):
                    target.write(chunk)
            os.replace(staging, local / info.base_name)
            copied += 1
        return copied


# ---------------------------------------------------------------------------------------------
# what the cluster runs


@dataclass
class RaySettings:
    """How the work is spread; plain data, filled from the Execution resource."""

    storage: Storage
    num_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0  # Ray's num_gpus per actor (a fraction shares a GPU)
    batch_size: int = 256
    max_restarts: int = 3
    max_task_retries: int = 3
    omp_threads_per_actor: int = 0  # 0: Ray's default (the actor's CPU count)
    read_cpus: float = 0.1  # the read and select tasks are light; they must fit beside the actors


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
        skipped = _exists(self.filesystem, path)
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

    def __init__(
        self,
        cache_uri,
        run_uri,
        backend_factory: Callable[[], LLMBackend],
        prompt: TagPrompt,
        sampling: Sampling,
        max_input_tokens: int,
        max_attempts: int,
        retry_temperature: float,
    ):
        self.backend_factory, self.prompt, self.sampling = backend_factory, prompt, sampling
        self.max_input_tokens, self.max_attempts, self.retry_temperature = max_input_tokens, max_attempts, retry_temperature
        super().__init__(cache_uri, run_uri)

    def load(self) -> None:
        self.backend = self.backend_factory()
        if hasattr(self.backend, "engine"):
            self.backend.engine()

    def process(self, batch):
        stats = TaggingStats()
        work = list(zip(batch.column("text_hash").to_pylist(), batch.column("sample_id").to_pylist(), batch.column("text").to_pylist()))
        rows = tag_batch(work, self.backend, self.prompt, self.sampling, self.max_input_tokens, self.max_attempts, self.retry_temperature, stats)
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


# ---------------------------------------------------------------------------------------------
# the driver


@dataclass
class ClusterStats:
    """What the cluster did for one shard: the figures the asset reports."""

    planned_rows: int = 0
    batches: int = 0
    batches_skipped: int = 0  # found written by an earlier attempt of a retried task
    batches_retried: int = 0  # started more than once (their actor died or failed)
    actor_starts: int = 0
    actors: int = 0
    seconds: float = 0.0
    load_seconds: float = 0.0
    truncated: int = 0
    input_tokens: int = 0
    generate_seconds: float = 0.0
    per_actor: dict[str, dict] = field(default_factory=dict)

    def metadata(self, num_actors: int) -> dict[str, Any]:
        return {
            "ray_actors": self.actors,
            "ray_actor_pool_size": num_actors,
            "ray_actor_restarts": max(self.actor_starts - num_actors, 0),
            "ray_batches": self.batches,
            "ray_batches_retried": self.batches_retried,
            "ray_batches_skipped_on_retry": self.batches_skipped,
            "ray_pipeline_seconds": round(self.seconds, 3),
            "ray_rows_per_second_per_actor": {
                actor: round(v["rows"] / v["seconds"], 3) if v["seconds"] else 0.0 for actor, v in sorted(self.per_actor.items())
            },
        }


def run_pipeline(
    shard_uris: list[str],
    planned: set[str],
    include_response: bool,
    actor_cls: type,
    actor_kwargs: dict,
    cache_uri: str,
    settings: RaySettings,
    log: Callable[[str], None],
) -> ClusterStats:
    """Read the shards' Parquet on the cluster, keep the ``planned`` sample ids and run them through
    a pool of ``actor_cls``; returns the cluster figures once every batch is written."""
    import ray
    from pyarrow import fs
    from ray.data import ActorPoolStrategy, DataContext

    started = time.perf_counter()
    run_uri = join_uri(settings.storage.root, RUNS_FOLDER, uuid.uuid4().hex)
    context = DataContext.get_current()
    previous = (context.execution_options.preserve_order, context.enable_progress_bars)
    # the same batches as local execution, and the same batches again when a task is retried
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    opened = [open_uri(uri) for uri in shard_uris]
    filesystem, shard_paths = opened[0][0], [path for _, path in opened]
    remote_args: dict[str, Any] = {"max_restarts": settings.max_restarts, "max_task_retries": settings.max_task_retries}
    if settings.omp_threads_per_actor:
        remote_args["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": str(settings.omp_threads_per_actor)}}
    stats = ClusterStats(planned_rows=len(planned))
    try:
        dataset = (
            ray.data.read_parquet(shard_paths, filesystem=filesystem, partitioning=None, num_cpus=settings.read_cpus)
            .select_columns(["sample_id", "messages"])
            .map_batches(
                select_planned,
                fn_kwargs={"planned": planned, "include_response": include_response},
                batch_format="pyarrow",
                batch_size=None,
                num_cpus=settings.read_cpus,
            )
            # one block a batch: a shard of one row group spreads over the whole actor pool
            .repartition(target_num_rows_per_block=settings.batch_size)
            .map_batches(
                actor_cls,
                fn_constructor_kwargs={**actor_kwargs, "cache_uri": cache_uri, "run_uri": run_uri},
                batch_size=settings.batch_size,
                batch_format="pyarrow",
                compute=ActorPoolStrategy(size=settings.num_actors),
                num_cpus=settings.cpus_per_actor,
                num_gpus=settings.gpus_per_actor or None,
                **remote_args,
            )
        )
        done = 0
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():
                done += row["rows"]
                stats.batches += 1
                stats.batches_skipped += row["skipped"]
                stats.load_seconds = max(stats.load_seconds, row["load_seconds"])
                stats.truncated += row["truncated"]
                stats.input_tokens += row["input_tokens"]
                stats.generate_seconds += row["generate_seconds"]
                actor = stats.per_actor.setdefault(row["actor"], {"rows": 0, "seconds": 0.0})
                actor["rows"] += row["rows"]
                actor["seconds"] += row["seconds"]
                state = "already written by an earlier attempt" if row["skipped"] else f"in {row['seconds']:.1f}s"
                log(f"batch {stats.batches}: {row['rows']} rows on {row['actor']} {state} ({done:,}/{len(planned):,})")
        markers_fs, run_path = open_uri(run_uri)
        names = [info.base_name for info in markers_fs.get_file_info(fs.FileSelector(run_path, allow_not_found=True))]
        attempts: dict[str, int] = {}
        for name in names:
            if name.startswith("attempt-"):
                key = name.split("-")[1]
                attempts[key] = attempts.get(key, 0) + 1
        stats.batches_retried = sum(n > 1 for n in attempts.values())
        stats.actor_starts = sum(name.startswith("actor-") for name in names)
        stats.actors = len(stats.per_actor)
        if _exists(markers_fs, run_path):
            markers_fs.delete_dir(run_path)
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = previous
    stats.seconds = time.perf_counter() - started
    return stats


@dataclass
class ShardFigures:
    """One shard's share of a cluster run, in the terms of local execution's statistics."""

    samples: int = 0
    tagged: int = 0  # texts this shard was the first of the run to bring, done on the cluster
    cached: int = 0  # samples whose text was done before (or by an earlier shard of the run)
    truncated: int = 0
    input_tokens: int = 0
    generate_seconds: float = 0.0  # the cluster's model time, shared out by rows
    seconds: float = 0.0  # the cluster run's wall time, shared out by rows
    load_seconds: float = 0.0  # the actors' model load, on the first shard with work

    def apply(self, stats: TaggingStats) -> TaggingStats:
        """Local statistics of a shard assembled from the cache, corrected for the work the cluster did."""
        stats.tagged, stats.cached = self.tagged, self.cached
        stats.truncated, stats.input_tokens = self.truncated, self.input_tokens
        stats.generate_seconds, stats.seconds = self.generate_seconds, stats.seconds + self.seconds
        return stats


def fill_cache_on_ray(
    shards: dict[str, tuple[str, list[tuple[str, str]]]],  # shard -> (file, [(sample_id, text_hash)])
    cache_folder: Path,
    known: Callable[[list[str]], dict],
    actor_cls: type,
    actor_kwargs: dict,
    *,
    include_response: bool,
    settings: RaySettings,
    log: Callable[[str], None] = lambda message: None,
) -> tuple[dict[str, ShardFigures], ClusterStats]:
    """Do on the cluster, in one pipeline for all ``shards`` of a run (so each actor loads its model
    once), the texts the cache lacks; afterwards the shards are assembled from the cache locally.

    ``shards`` maps a shard key to its raw_pool file (relative to the warehouse folder) and its kept
    ``(sample_id, text_hash)`` pairs in file order (the texts themselves stay in the files: the
    driver holds two short strings a sample); ``known(hashes)`` returns the cache's entries for
    those text hashes. The plan is local execution's, shard after shard: the first sample of each
    text not yet cached is sent, once for the run. Raises if any planned text is missing afterwards.
    """
    storage = settings.storage
    folder = _relative(cache_folder, storage.local_root)
    storage.fetch_parts(folder)  # files a killed earlier run left on the workers' storage
    hashes = {shard: [h for _, h in samples] for shard, (_, samples) in shards.items()}
    done = known(list(dict.fromkeys(h for shard_hashes in hashes.values() for h in shard_hashes)))
    first: dict[str, str] = {}  # text hash -> the sample sent for it
    new: dict[str, set[str]] = {shard: set() for shard in shards}
    for shard, (_, samples) in shards.items():
        for (sample_id, _), h in zip(samples, hashes[shard]):
            if h not in done and h not in first:
                first[h] = sample_id
                new[shard].add(h)
    figures = {
        # as local execution counts shard after shard: a text an earlier shard of the run brings is cached here
        shard: ShardFigures(samples=len(hashes[shard]), tagged=len(new[shard]), cached=sum(h not in new[shard] for h in hashes[shard]))
        for shard in shards
    }
    cluster = ClusterStats()
    if not first:
        return figures, cluster
    files = [shards[shard][0] for shard in shards if new[shard]]
    for file in files:
        storage.put(file)
    cluster = run_pipeline(
        [join_uri(storage.root, file) for file in files],
        set(first.values()),
        include_response,
        actor_cls,
        actor_kwargs,
        join_uri(storage.root, folder),
        settings,
        log,
    )
    storage.fetch_parts(folder)
    rows = known(list(first))
    lost = [h for h in first if h not in rows]
    if lost:
        raise RuntimeError(f"{len(lost)} of {len(first)} planned texts came back from the cluster without a result (first {lost[0]})")
    loaded = False
    for shard, figure in figures.items():
        share = len(new[shard]) / len(first)
        figure.generate_seconds, figure.seconds = cluster.generate_seconds * share, cluster.seconds * share
        for h in new[shard]:
            if isinstance(rows[h], dict):  # tag cache rows carry the truncation figures
                figure.truncated += bool(rows[h]["truncated"])
                figure.input_tokens += rows[h]["input_tokens"] or 0
        if new[shard] and not loaded:
            figure.load_seconds, loaded = cluster.load_seconds, True
    log(f"{len(first):,} new texts done on {cluster.actors} actor(s) in {cluster.seconds:.1f}s over {len(files)} shard(s)")
    return figures, cluster


def tag_shards_on_ray(
    shards: dict[str, tuple[str, list[tuple[str, str]]]],  # shard -> (file, [(sample_id, text_hash)])
    backend_factory: Callable[[], LLMBackend],
    prompt: TagPrompt,
    cache: TagCache,
    *,
    include_response: bool,
    settings: RaySettings,
    sampling: Sampling = Sampling(),
    max_input_tokens: int = 1536,
    max_attempts: int = 3,
    retry_temperature: float = 0.7,
    log: Callable[[str], None] = lambda message: None,
) -> tuple[dict[str, ShardFigures], ClusterStats]:
    """Fill the tag cache for ``shards`` on the cluster (vLLM actors running the local ``tag_batch``)."""
    actor_kwargs = {
        "backend_factory": backend_factory,
        "prompt": prompt,
        "sampling": sampling,
        "max_input_tokens": max_input_tokens,
        "max_attempts": max_attempts,
        "retry_temperature": retry_temperature,
    }
    return fill_cache_on_ray(shards, cache.folder, cache.lookup, TagActor, actor_kwargs, include_response=include_response, settings=settings, log=log)


def embed_shards_on_ray(
    shards: dict[str, tuple[str, list[tuple[str, str]]]],  # shard -> (file, [(sample_id, text_hash)])
    cache: EmbeddingCache,
    *,
    model: str,
    device: str,
    encode_batch_size: int,
    settings: RaySettings,
    log: Callable[[str], None] = lambda message: None,
) -> tuple[dict[str, ShardFigures], ClusterStats]:
    """Fill the embedding cache for ``shards`` on the cluster (sentence-transformers actors)."""
    actor_kwargs = {"model": model, "device": device, "encode_batch_size": encode_batch_size}
    return fill_cache_on_ray(shards, cache.folder, cache.read, EmbedActor, actor_kwargs, include_response=False, settings=settings, log=log)


class NoLocalModel:
    """The backend handed to the local assembly after a cluster run: every text is cached by then,
    so a call means a planning bug, never a silent local fallback."""

    model_id = "none"

    def complete(self, *args, **kwargs):
        raise RuntimeError("a text the cluster should have done reached the local assembly")

    truncate = encode = complete

    def close(self) -> None:
        pass


def _relative(folder: Path, root: str) -> str:
    return Path(folder).resolve().relative_to(Path(root).resolve()).as_posix()
