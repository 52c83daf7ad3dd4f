"""Jobs for the UI launchpad and the sensors."""

import dagster as dg

from mig_assets.defs.pool.assets import raw_pool

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.assets(raw_pool),
    executor_def=dg.in_process_executor,
    description="Ingest shard files: one pool_shards partition, or a range of them in one run (read two at a time, committed in registration order).",
)
