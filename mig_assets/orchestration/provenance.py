"""What made the data: every materialization carries the project settings in effect, and the
latest materialization of an asset (partition) says which run and code version made it.

The record is the effective settings of this process (file, environment overrides, defaults; API
keys only by the name of their variable) and their fingerprint, so an auditor can tell from any
materialization, or any selection manifest, which configuration produced it.
"""

import dagster as dg

from mig_assets.core.selection.lineage import SHARD_INPUT_ASSETS
from mig_assets.settings import current_settings


def settings_record() -> dict:
    settings = current_settings()
    return {"fingerprint": settings.fingerprint(), **settings.record()}


def record_settings(context: dg.AssetExecutionContext) -> None:
    """Add the settings to the materialization(s) of this step (every partition of a range)."""
    record = settings_record()
    context.add_asset_metadata({"settings": dg.MetadataValue.json(record), "settings_fingerprint": record["fingerprint"]})


def latest_materialization(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str | None = None):
    """The latest materialization record of ``asset_key`` (of its ``partition``, when given), or None."""
    records_filter = dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition] if partition is not None else None)
    records = instance.fetch_materializations(records_filter, limit=1).records
    return records[0] if records else None


def code_version_of(record) -> str | None:
    """The code version a materialization record was made with."""
    return record.asset_materialization.tags.get("dagster/code_version")


GLOBAL_INPUT_ASSETS = ("tag_embeddings", "label_graph", "knowledge_tree", "target_profile")


def latest_materializations(instance: dg.DagsterInstance, shard: str | None = None) -> dict:
    """Run id, data version and code version (the tagger's, scorer's, embedder's for the per-shard
    assets) of the latest materialization of each per-shard input of ``shard`` (``None``: of each
    global input)."""
    if shard is not None:
        return latest_shard_materializations(instance, [shard])[shard]
    found = {}
    for asset in GLOBAL_INPUT_ASSETS:
        record = latest_materialization(instance, dg.AssetKey(asset))
        if record is not None:
            found[asset] = materialization_facts(record)
    return found


def latest_shard_materializations(instance: dg.DagsterInstance, shards: list[str], page: int = 1000) -> dict[str, dict]:
    """:func:`latest_materializations` of each of ``shards``: one query per per-shard asset (newest
    records first, the first seen of a shard is its latest), not one per shard and asset."""
    found: dict[str, dict] = {shard: {} for shard in shards}
    for asset in SHARD_INPUT_ASSETS:
        pending, cursor = set(shards), None
        while pending:
            records_filter = dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=sorted(pending))
            result = instance.fetch_materializations(records_filter, limit=page, cursor=cursor)
            for record in result.records:
                if record.partition_key in pending:
                    found[record.partition_key][asset] = materialization_facts(record)
                    pending.discard(record.partition_key)
            if not result.has_more:
                break
            cursor = result.cursor
    return found


def materialization_facts(record) -> dict:
    return {
        "run_id": record.run_id,
        "data_version": record.asset_materialization.tags.get("dagster/data_version"),
        "code_version": code_version_of(record),
    }
