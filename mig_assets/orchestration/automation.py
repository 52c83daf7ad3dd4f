"""When assets run by themselves: new shards are tagged and embedded as soon as they are ingested;
global assets (vocabulary, embeddings, graph, tree, selections) re-run on a cron, and only when some
shard changed since the last tick, so a night without new data runs nothing.

The rule for expensive per-shard work (tags, scores, embeddings): automation makes it for new or
changed shards, and never replaces what another configuration made. After a change of the tagger,
scorer or embedder in the settings, those assets show "code version changed" in the UI, automation
leaves them alone, and re-making them is a launched run (``tag_job``, a backfill, or
``mig-assets run --retag``).
"""

import dagster as dg

from mig_assets.orchestration.provenance import code_version_of, latest_materialization
from mig_assets.settings import current_settings

RESELECT_CRON = current_settings().reselect_cron
AUTOMATION_RUN_TAG = "dagster/from_automation_condition"  # what the automation sensor tags its runs with

# made by another configuration: the code version changed after the latest materialization
made_by_other_configuration = dg.AutomationCondition.code_version_changed().since(dg.AutomationCondition.newly_updated())
# per-shard assets: as soon as the shard's upstream is (re)materialized, unless that would replace another configuration's work
on_new_shard = dg.AutomationCondition.eager() & ~made_by_other_configuration
# global assets: once per cron period, if every dependency was updated (or is being updated) since
re_select = dg.AutomationCondition.on_cron(RESELECT_CRON)

automation_sensor = dg.AutomationConditionSensorDefinition(
    "pool_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Evaluates the assets' automation conditions: tag/embed new shards, re-select on the cron.",
)


def refuse_to_replace_other_configuration(context: dg.AssetExecutionContext) -> None:
    """Fail an automation run that would overwrite partitions materialized with another code
    version (another tagger, scorer or embedding model): that work is replaced only on request.

    The condition above keeps automation from asking in the first place; this holds even when the
    automation has no memory of the earlier code version (a fresh daemon over an old ``MIG_HOME``).
    """
    if context.run.tags.get(AUTOMATION_RUN_TAG) != "true":
        return
    key = context.asset_key
    current = context.assets_def.code_versions_by_key.get(key)
    for partition in context.partition_keys:
        record = latest_materialization(context.instance, key, partition)
        made_by = code_version_of(record) if record is not None else None
        if made_by and made_by != current:
            raise dg.Failure(
                description=(
                    f"{key.to_user_string()}[{partition}] was made by code version {made_by} and this run's is {current} "
                    "(the settings changed): automation never replaces that work. Re-make it on purpose with tag_job "
                    "(or `mig-assets run --retag`)."
                ),
                allow_retries=False,
            )
