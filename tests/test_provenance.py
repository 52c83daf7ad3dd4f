"""The latest materialization of each per-shard input, for many shards at once, equals asking shard
by shard, whatever the page size of the record queries."""

import dagster as dg
import pytest

from mig_assets.orchestration.provenance import (
    SHARD_INPUT_ASSETS,
    latest_materialization,
    latest_shard_materializations,
    materialization_facts,
)


@pytest.mark.parametrize("page", [1, 2, 1000])
def test_latest_shard_materializations_equal_the_latest_record_of_each_shard(page):
    instance = dg.DagsterInstance.ephemeral()
    shards = ["a.jsonl", "b.jsonl", "c.jsonl", "d.jsonl"]
    version = 0
    for round_ in range(3):  # re-materialized shards: the newest record must win
        for shard in shards[: 4 - round_]:
            for asset in SHARD_INPUT_ASSETS[:3]:  # sample_embeddings never made: absent
                version += 1
                tags = {"dagster/data_version": f"v{version}", "dagster/code_version": f"c{round_}"}
                instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset, partition=shard, tags=tags))
    found = latest_shard_materializations(instance, [*shards, "never.jsonl"], page=page)
    expected = {
        shard: {
            asset: materialization_facts(record)
            for asset in SHARD_INPUT_ASSETS
            if (record := latest_materialization(instance, dg.AssetKey(asset), shard)) is not None
        }
        for shard in [*shards, "never.jsonl"]
    }
    assert found == expected
    assert found["a.jsonl"]["atomic_tags"]["code_version"] == "c2" and found["d.jsonl"]["atomic_tags"]["code_version"] == "c0"
    assert found["never.jsonl"] == {} and "sample_embeddings" not in found["a.jsonl"]
