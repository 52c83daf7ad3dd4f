"""When assets run by themselves: new shards are tagged and embedded as soon as they are ingested;
global assets (vocabulary, embeddings, graph, tree, selections) re-run on a cron, and only when some
shard changed since the last tick, so a night without new data runs nothing."""

import os

import dagster as dg

RESELECT_CRON = os.environ.get("MIG_RESELECT_CRON", "0 3 * * *")

# per-shard assets: as soon as the shard's upstream is (re)materialized
on_new_shard = dg.AutomationCondition.eager()
# global assets: once per cron period, if every dependency was updated (or is being updated) since
re_select = dg.AutomationCondition.on_cron(RESELECT_CRON)

automation_sensor = dg.AutomationConditionSensorDefinition(
    "pool_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Evaluates the assets' automation conditions: tag/embed new shards, re-select on the cron.",
)
