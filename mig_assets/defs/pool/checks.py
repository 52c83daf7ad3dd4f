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


def raw_pool_check_results(con, layout: WarehouseLayout, every: list[ShardStats], max_quarantine_rate: float) -> list[dg.AssetCheckResult]:
    """The checks of a run's shards (one, or a range: each check judges the worst shard)."""
    counted = {
        stats.shard: (
            pq.ParquetFile(layout.shard_file("raw_pool", stats.shard)).metadata.num_rows,
            pq.ParquetFile(layout.shard_file("quarantine", stats.shard)).metadata.num_rows,
        )
        for stats in every
    }
    unaccounted = [stats.shard for stats in every if sum(counted[stats.shard]) != stats.rows_read]
    kept_twice = con.execute(
        "SELECT count(*) FROM (SELECT sample_id FROM raw_pool_rows WHERE duplicate_of IS NULL GROUP BY sample_id HAVING count(*) > 1)"
    ).fetchall()[0][0]
    rates = {stats.shard: stats.rows_quarantined / stats.rows_read if stats.rows_read else 0.0 for stats in every}
    empty = [stats for stats in every if not stats.rows_read]
    worst = max(every, key=lambda stats: (not stats.rows_read, rates[stats.shard]))
    accounting = (
        {"rows_read": worst.rows_read, "sample_rows": counted[worst.shard][0], "quarantine_rows": counted[worst.shard][1]}
        if len(every) == 1
        else {"shards": len(every), "shards_unaccounted": unaccounted}
    )
    return [
        dg.AssetCheckResult(check_name="rows_accounted", passed=not unaccounted, metadata=accounting),
        dg.AssetCheckResult(
            check_name="sample_ids_unique",
            passed=kept_twice == 0,
            metadata={"sample_ids_kept_more_than_once": kept_twice},
        ),
        dg.AssetCheckResult(
            check_name="quarantine_rate",
            passed=not empty and rates[worst.shard] <= max_quarantine_rate,
            severity=dg.AssetCheckSeverity.WARN,
            description="; ".join(f"{stats.source_file} holds no records" for stats in empty) or None,
            metadata={"quarantine_rate": round(rates[worst.shard], 4), "max_quarantine_rate": max_quarantine_rate}
            | ({} if len(every) == 1 else {"worst_shard": worst.shard}),
        ),
    ]
