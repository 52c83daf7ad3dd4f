"""Checks evaluated with every ``raw_pool`` materialization (reported in the same run)."""

import dagster as dg
import pyarrow.parquet as pq

from mig_assets.core.ingest.shards import ShardStats
from mig_assets.core.store.layout import WarehouseLayout

RAW_POOL_CHECK_SPECS = [
    dg.AssetCheckSpec(
        "rows_accounted",
        asset="raw_pool",
        blocking=True,
        description="rows_read = rows_kept + rows_quarantined + duplicates, recounted from the written files",
    ),
    dg.AssetCheckSpec(
        "sample_ids_unique",
        asset="raw_pool",
        blocking=True,
        description="no sample_id is kept (duplicate_of IS NULL) in more than one row across the pool",
    ),
    dg.AssetCheckSpec(
        "quarantine_rate",
        asset="raw_pool",
        description="share of quarantined rows at most max_quarantine_rate; also warns on an empty shard",
    ),
]


def raw_pool_check_results(con, layout: WarehouseLayout, stats: ShardStats, max_quarantine_rate: float) -> list[dg.AssetCheckResult]:
    samples_rows = pq.ParquetFile(layout.shard_file("raw_pool", stats.shard)).metadata.num_rows
    quarantine_rows = pq.ParquetFile(layout.shard_file("quarantine", stats.shard)).metadata.num_rows
    accounted = samples_rows + quarantine_rows == stats.rows_read
    kept_twice = con.execute(
        "SELECT count(*) FROM (SELECT sample_id FROM raw_pool_rows WHERE duplicate_of IS NULL GROUP BY sample_id HAVING count(*) > 1)"
    ).fetchall()[0][0]
    rate = stats.rows_quarantined / stats.rows_read if stats.rows_read else 0.0
    return [
        dg.AssetCheckResult(
            check_name="rows_accounted",
            passed=accounted,
            metadata={"rows_read": stats.rows_read, "sample_rows": samples_rows, "quarantine_rows": quarantine_rows},
        ),
        dg.AssetCheckResult(
            check_name="sample_ids_unique",
            passed=kept_twice == 0,
            metadata={"sample_ids_kept_more_than_once": kept_twice},
        ),
        dg.AssetCheckResult(
            check_name="quarantine_rate",
            passed=stats.rows_read > 0 and rate <= max_quarantine_rate,
            severity=dg.AssetCheckSeverity.WARN,
            description=None if stats.rows_read else f"{stats.source_file} holds no records",
            metadata={"quarantine_rate": round(rate, 4), "max_quarantine_rate": max_quarantine_rate},
        ),
    ]
