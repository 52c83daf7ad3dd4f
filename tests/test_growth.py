"""How users live with the project: the pool grows by a shard file, and automation does the rest.

The automation conditions are evaluated with `evaluate_automation_conditions` at chosen times
around the nightly cron (03:00 UTC); what they request is then materialized, as the daemon would.
"""

import datetime as dt
import json
import os
import shutil

import dagster as dg
import duckdb
import pytest

from mig_assets.core.outputs.explain import explain
from mig_assets.definitions import defs
from mig_assets.defs.pool.sensors import incoming_shards_sensor
from mig_assets.demo_pool import write_demo_target
from tests.conftest import MIG_FIXTURES

WATCHED = [
    "atomic_tags",
    "sample_embeddings",
    "quality_scores",
    "tag_vocabulary",
    "tag_embeddings",
    "label_graph",
    "knowledge_tree",
    "target_profile",
    "mig_selection",
    "tags_aligned_5pct",
    "random_5pct",
]


def requested(result) -> dict[str, int]:
    counts = {key: result.get_num_requested(dg.AssetKey(key)) for key in WATCHED}
    return {key: n for key, n in counts.items() if n}


@pytest.mark.slow
def test_pool_growth_tags_only_the_new_shard_and_reselects_once(layout, instance, resources):
    assets = list(defs.assets)
    shard_assets = [a for a in assets if a.partitions_def is not None]
    global_assets = [a for a in assets if a.partitions_def is None]

    def run(selection, partition_key=None):
        return dg.materialize(assets, selection=selection, partition_key=partition_key, instance=instance, resources=resources)

    write_demo_target(layout.home / "targets")
    shutil.copyfile(MIG_FIXTURES / "p2k.jsonl", layout.incoming_dir / "p2k.jsonl")
    instance.add_dynamic_partitions("pool_shards", ["p2k.jsonl"])
    run(shard_assets, "p2k.jsonl")
    run(global_assets)

    day = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(days=1)
    cursor = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=day.replace(hour=4)).cursor
    quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor, evaluation_time=day + dt.timedelta(days=1, hours=3, minutes=5))
    assert requested(quiet) == {}  # the cron tick passed, nothing grew: no run

    # a user drops a new shard file: fresh, high-quality samples
    records = [json.loads(line) for line in (MIG_FIXTURES / "p2k.jsonl").read_text().splitlines()[1000:1100]]
    for record in records:
        record["dialogs"][0]["content"] = "(fresh) " + record["dialogs"][0]["content"]
        if record.get("annotation", {}).get("deita"):
            record["annotation"]["deita"]["quality_scores"] = [q * 50 for q in record["annotation"]["deita"]["quality_scores"]]
    new_file = layout.incoming_dir / "fresh.jsonl"
    new_file.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    past = (dt.datetime.now() - dt.timedelta(minutes=5)).timestamp()
    os.utime(new_file, (past, past))
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        sensed = incoming_shards_sensor(context)
    assert [r.partition_key for r in sensed.run_requests if r.partition_key == "fresh.jsonl"] == ["fresh.jsonl"]
    instance.add_dynamic_partitions("pool_shards", ["fresh.jsonl"])
    run([a for a in assets if a.key.to_user_string() == "raw_pool"], "fresh.jsonl")

    after_ingest = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=quiet.cursor, evaluation_time=day + dt.timedelta(days=1, hours=3, minutes=10)
    )
    assert requested(after_ingest) == {"atomic_tags": 1, "sample_embeddings": 1, "quality_scores": 1}  # only the new shard
    tagged = run([a for a in shard_assets if a.key.to_user_string() != "raw_pool"], "fresh.jsonl")
    assert tagged.asset_materializations_for_node("atomic_tags")[0].metadata["dagster/row_count"].value == 100

    after_tagging = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=after_ingest.cursor, evaluation_time=day + dt.timedelta(days=1, hours=3, minutes=15)
    )
    assert requested(after_tagging) == {key: 1 for key in WATCHED[3:]}  # the re-selection, once
    reselected = run(global_assets)
    assert reselected.asset_materializations_for_node("mig_selection")[0].metadata["version"].value == 2
    again = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=after_tagging.cursor, evaluation_time=day + dt.timedelta(days=1, hours=3, minutes=20)
    )
    assert requested(again) == {}

    partitions_tagged = [
        e.partition
        for e in instance.fetch_materializations(dg.AssetKey("atomic_tags"), limit=100).records
        for e in [e.event_log_entry.dagster_event.event_specific_data.materialization]
    ]
    assert sorted(partitions_tagged) == ["fresh.jsonl", "p2k.jsonl"]  # the old shard was not re-tagged

    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        added = con.execute(
            "SELECT d.sample_id, d.reason FROM selection_diffs d JOIN samples s USING (sample_id) "
            "WHERE d.selection = 'mig_selection' AND d.change = 'added' AND s.shard = 'fresh.jsonl'"
        ).fetchall()
        assert added and all(reason.startswith("new sample: shard fresh.jsonl") for _, reason in added)
        rejected = con.execute(
            "SELECT sample_id FROM samples WHERE shard = 'fresh.jsonl' AND sample_id NOT IN "
            "(SELECT sample_id FROM selection_members WHERE selection = 'mig_selection' AND version = 2) "
            # a candidate the greedy refused, not one curation left out before it (near copies of old samples)
            "AND sample_id NOT IN (SELECT sample_id FROM selection_exclusions WHERE selection = 'mig_selection' AND version = 2) "
            "ORDER BY sample_id LIMIT 1"
        ).fetchall()[0][0]
        chosen, refused = explain(con, added[0][0], "mig_selection"), explain(con, rejected, "mig_selection")
    assert chosen["selection"]["selected"] and chosen["source"]["source_file"] == "incoming/fresh.jsonl"
    assert not refused["selection"]["selected"] and refused["selection"]["gain_at_end"] <= refused["selection"]["last_pick_gain"]
