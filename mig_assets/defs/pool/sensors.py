"""Watch ``MIG_HOME/pool/incoming`` and turn shard files into ``pool_shards`` partitions.

Versioning rule: a file is identified by its path (the partition key); its version by
``size-mtime``. A new path adds a partition and requests its ingestion; a changed file requests a
re-ingestion of the same partition (run key ``<key>@<size>-<mtime_ns>``), which replaces the
shard's rows and gets a new data version when the bytes changed, so downstream assets show stale.
Deleted files keep their partition and data (nothing is lost silently); the tick logs them.

A file whose bytes are the ones the warehouse already ingested for its shard (the CLI ingested it,
or an earlier daemon did before its cursor was lost) is recorded as seen and not re-ingested, so
starting the UI over a ``MIG_HOME`` the CLI filled launches nothing.

A shard whose samples or quarantine Parquet was deleted by hand is reported and re-ingested from
its file (run key ``<key>@<size>-<mtime_ns>@restore-<stats mtime_ns>``: once per loss).
"""

import json
import time

import dagster as dg
import pyarrow.parquet as pq

from mig_assets.core.ingest.shards import file_sha256
from mig_assets.defs.pool.jobs import ingest_job
from mig_assets.orchestration.partitions import pool_shards
from mig_assets.orchestration.run_recovery import reclaim_dead_runs
from mig_assets.resources import Warehouse

# A file modified less than this long ago may still be being written: wait for the next tick.
SETTLE_SECONDS = 5.0


def file_fingerprint(path) -> str:
    stat = path.stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def already_ingested(layout, key: str, path) -> bool:
    """Whether the warehouse's latest ingestion of shard ``key`` read exactly the bytes of ``path``."""
    stats = layout.shard_file("shard_stats", key)
    if not stats.exists():
        return False
    [recorded] = pq.read_table(stats, columns=["file_sha256"]).column("file_sha256").to_pylist()[:1] or [None]
    return recorded == file_sha256(path)


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers new shard files in MIG_HOME/pool/incoming as pool_shards partitions "
    "and requests their ingestion; a changed file is re-ingested as a new version.",
)
def incoming_shards_sensor(context: dg.SensorEvaluationContext, warehouse: Warehouse) -> dg.SensorResult:
    # a killed run would hold the `duckdb` pool slot forever and keep every requested run queued
    for line in reclaim_dead_runs(context.instance):
        context.log.warning(line)
    layout = warehouse.layout
    shards, problems = layout.discover_shards()
    for problem in problems:
        context.log.warning(problem)
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    registered = set(context.instance.get_dynamic_partitions(pool_shards.name))
    now = time.time()
    new_keys, requests = [], []
    for key, path in shards.items():
        fingerprint = file_fingerprint(path)
        if seen.get(key) == fingerprint or now - path.stat().st_mtime < SETTLE_SECONDS:
            continue
        if key in registered and already_ingested(layout, key, path):
            seen[key] = fingerprint
            continue
        if key not in registered:
            new_keys.append(key)
        requests.append(
            dg.RunRequest(
                partition_key=key,
                run_key=f"{key}@{fingerprint}",
                tags={"mig/source_file": layout.relative_source(path), "mig/file_fingerprint": fingerprint},
            )
        )
        seen[key] = fingerprint
    requests += restore_requests(context, layout, shards, requested={request.partition_key for request in requests})
    missing = sorted(set(seen) - set(shards))
    if missing:
        context.log.info(f"shard files no longer present (partitions and data kept): {', '.join(missing)}")
    skip_reason = None
    if not requests:
        skip_reason = "no new or changed shard files" + (f"; skipped: {'; '.join(problems)}" if problems else "")
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[pool_shards.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps(seen, sort_keys=True),
        skip_reason=skip_reason,
    )


def restore_requests(context: dg.SensorEvaluationContext, layout, shards: dict, requested: set[str]) -> list[dg.RunRequest]:
    """A re-ingestion for each shard whose samples or quarantine Parquet was deleted, once per loss
    (the run key carries the stats file's mtime, which the re-ingestion changes)."""
    requests = []
    for key, gone in layout.missing_shard_files().items():
        if key in requested:  # re-ingested anyway: its file changed
            continue
        if key not in shards:
            context.log.warning(f"shard {key}: {', '.join(map(str, gone))} deleted and its file is gone too: cannot restore it")
            continue
        context.log.warning(f"shard {key}: {', '.join(map(str, gone))} deleted; re-ingesting {shards[key]}")
        stats_version = layout.shard_file("shard_stats", key).stat().st_mtime_ns
        requests.append(
            dg.RunRequest(
                partition_key=key,
                run_key=f"{key}@{file_fingerprint(shards[key])}@restore-{stats_version}",
                tags={"mig/source_file": layout.relative_source(shards[key]), "mig/restore": "missing shard files"},
            )
        )
    return requests
