"""``raw_pool[shard]``: one shard file -> canonical samples, quarantine and stats in Parquet."""

import hashlib

import dagster as dg
import pyarrow.parquet as pq
from pydantic import Field

from mig_assets.core.ingest.columns import SAMPLE_SCHEMA
from mig_assets.core.ingest.readers import DEFAULT_MAX_RECORD_BYTES
from mig_assets.core.ingest.records import FORMATS
from mig_assets.core.ingest.shard_range import ingest_shard_range
from mig_assets.core.ingest.shards import ShardStats
from mig_assets.defs.pool.checks import RAW_POOL_CHECK_SPECS, raw_pool_check_results
from mig_assets.orchestration.partitions import pool_shards
from mig_assets.orchestration.provenance import record_settings
from mig_assets.resources import Warehouse

INGEST_CODE_VERSION = "1"
PREVIEW_ROWS = 5


class IngestConfig(dg.Config):
    source_format: str = Field(default="auto", description=f"auto (detected per record) or one of: {', '.join(FORMATS)}")
    max_record_bytes: int = Field(default=DEFAULT_MAX_RECORD_BYTES, description="larger records are quarantined")
    max_quarantine_rate: float = Field(default=0.05, description="the quarantine_rate check warns above this share")


def _arrow_to_dagster_schema(schema) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type)) for f in schema])


RAW_POOL_SCHEMA = _arrow_to_dagster_schema(SAMPLE_SCHEMA)


@dg.asset(
    partitions_def=pool_shards,
    backfill_policy=dg.BackfillPolicy.single_run(),  # a range in one run: its shards are read in parallel processes
    group_name="pool",
    kinds={"parquet", "duckdb"},
    code_version=INGEST_CODE_VERSION,
    pool="duckdb",
    check_specs=RAW_POOL_CHECK_SPECS,
    metadata={"dagster/column_schema": RAW_POOL_SCHEMA, "partition_expr": "shard"},
    description=(
        "Instruction samples of one shard file: canonical messages, content-addressed sample_id, "
        "cross-shard duplicates marked (the first shard in registration order wins), bad rows quarantined with a reason."
    ),
)
def raw_pool(context: dg.AssetExecutionContext, config: IngestConfig, warehouse: Warehouse) -> dg.MaterializeResult:
    """One shard, or a range of shards in one run (read two at a time, put in place in
    registration order); each shard's materialization carries its own figures."""
    record_settings(context)
    layout = warehouse.layout
    shards = list(context.partition_keys)
    every = ingest_shard_range(
        layout,
        [(shard, layout.shard_path(shard)) for shard in shards],
        run_id=context.run.run_id,
        source_format=config.source_format,
        max_record_bytes=config.max_record_bytes,
        on_commit=lambda stats: log_shard(context, stats),
    )
    with warehouse.connect() as con:
        check_results = raw_pool_check_results(con, layout, every, config.max_quarantine_rate)
    versions = [_data_version(stats, config) for stats in every]
    if len(every) == 1:
        return dg.MaterializeResult(
            metadata=_metadata(layout.shard_file("raw_pool", shards[0]), every[0]), check_results=check_results, data_version=dg.DataVersion(versions[0])
        )
    for stats in every:
        context.add_asset_metadata(_metadata(layout.shard_file("raw_pool", stats.shard), stats), partition_key=stats.shard)
    # Dagster records one data version per run: a range's is that of its shards' versions together
    return dg.MaterializeResult(check_results=check_results, data_version=dg.DataVersion(hashlib.sha256("|".join(versions).encode()).hexdigest()[:16]))


def log_shard(context: dg.AssetExecutionContext, stats: ShardStats) -> None:
    context.log.info(
        f"{stats.source_file}: read {stats.rows_read:,} rows in {stats.seconds:.1f}s "
        f"({stats.rows_read / max(stats.seconds, 1e-9):,.0f} rows/s): kept {stats.rows_kept:,}, "
        f"quarantined {stats.rows_quarantined:,}, duplicates {stats.duplicates:,}"
    )
    if stats.rows_read == 0:
        context.log.warning(f"{stats.source_file} holds no records")
    for removed in stats.stale_staging_removed:
        context.log.warning(f"removed {removed}, a staging file left behind by a crashed earlier run")
    for damage in stats.container_errors:
        context.log.warning(f"{stats.source_file} is damaged: {damage} (quarantined; every readable record kept)")


def _data_version(stats: ShardStats, config: IngestConfig) -> str:
    """Same file bytes + same code + same config = same data version (re-ingesting changes nothing)."""
    key = f"{stats.file_sha256}|{INGEST_CODE_VERSION}|{config.source_format}|{config.max_record_bytes}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _metadata(samples_path, stats: ShardStats) -> dict:
    return {
        "dagster/row_count": stats.rows_kept,
        "rows_read": stats.rows_read,
        "rows_kept": stats.rows_kept,
        "rows_quarantined": stats.rows_quarantined,
        "duplicates": stats.duplicates,
        "duplicates_in_shard": stats.duplicates_in_shard,
        "duplicates_of_other_shards": stats.duplicates_of_other_shards,
        "blank_lines": stats.blank_lines,
        "formats": dg.MetadataValue.json(stats.formats),
        "quarantine_reasons": dg.MetadataValue.json(stats.quarantine_reasons),
        "container": stats.container,
        "container_errors": dg.MetadataValue.json(stats.container_errors),
        "source_file": stats.source_file,
        "file_sha256": stats.file_sha256,
        "rows_per_second": round(stats.rows_read / max(stats.seconds, 1e-9), 1),
        "path": dg.MetadataValue.path(str(samples_path)),
        "preview": dg.MetadataValue.md(_preview(samples_path)),
    }


def _preview(samples_path) -> str:
    table = pq.ParquetFile(samples_path).read_row_group(0) if pq.ParquetFile(samples_path).num_row_groups else None
    if table is None or table.num_rows == 0:
        return "_no samples kept_"
    lines = ["| line | format | turns | first user turn | sample_id |", "|---|---|---|---|---|"]
    for row in table.slice(0, PREVIEW_ROWS).to_pylist():
        first_user = next((m["content"] for m in row["messages"] if m["role"] == "user"), "")
        text = " ".join(first_user.split())[:100].replace("|", "\\|")
        lines.append(f"| {row['line_no']} | {row['source_format']} | {row['n_turns']} | {text} | `{row['sample_id'][:12]}` |")
    return "\n".join(lines)
