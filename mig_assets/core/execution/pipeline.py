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

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mig_assets.core.embedding.encoder import EmbeddingCache
from mig_assets.core.execution.actors import EmbedActor, TagActor, select_planned
from mig_assets.core.execution.storage import Storage, exists, join_uri, open_uri
from mig_assets.core.llm.backends import LLMBackend
from mig_assets.core.tagging.rows import TagCache, TaggingStats, TagSettings

# shard -> (its raw_pool file relative to the warehouse, its kept (sample_id, text_hash) pairs in file order)
ShardTexts = dict[str, tuple[str, list[tuple[str, str]]]]
RUNS_FOLDER = "_ray_runs"  # per-pipeline markers (actor starts, batch attempts), removed after the run


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
                select_planned,  # type: ignore[arg-type]  # Ray's stubs do not model fn_kwargs
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
            for row in batch.to_pylist():  # type: ignore[union-attr]  # batch_format="pyarrow": a pyarrow.Table
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
        if exists(markers_fs, run_path):
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
    shards: ShardTexts,
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
    shards: ShardTexts,
    backend_factory: Callable[[], LLMBackend],
    tagging: TagSettings,
    cache: TagCache,
    *,
    include_response: bool,
    settings: RaySettings,
    log: Callable[[str], None] = lambda message: None,
) -> tuple[dict[str, ShardFigures], ClusterStats]:
    """Fill the tag cache for ``shards`` on the cluster (vLLM actors running the local ``tag_batch``)."""
    actor_kwargs = {"backend_factory": backend_factory, "tagging": tagging}
    return fill_cache_on_ray(shards, cache.folder, cache.lookup, TagActor, actor_kwargs, include_response=include_response, settings=settings, log=log)


def embed_shards_on_ray(
    shards: ShardTexts,
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
