"""Watch ``MIG_HOME/pool/incoming`` and turn shard files into ``pool_shards`` partitions.

Versioning rule: a file is identified by its path (the partition key); its version by
``size-mtime``. A new path adds a partition and requests its ingestion; a changed file requests a
re-ingestion of the same partition (run key ``<key>@<size>-<mtime_ns>``), which replaces the
shard's rows and gets a new data version when the bytes changed, so downstream assets show stale.
Deleted files keep their partition and data (nothing is lost silently); the tick logs them.
"""

import json
import time

import dagster as dg

from mig_assets.partitions import pool_shards
from mig_assets.pool.jobs import ingest_job
from mig_assets.resources import Warehouse
from mig_assets.run_recovery import reclaim_dead_runs

# A file modified less than this long ago may still be being written: wait for the next tick.
SETTLE_SECONDS = 5.0


def file_fingerprint(path) -> str:
    stat = path.stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"


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
