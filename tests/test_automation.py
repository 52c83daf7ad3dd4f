"""Declarative automation: a newly ingested shard is tagged and embedded; globals wait for the cron."""

import dagster as dg

from mig_assets.definitions import defs
from mig_assets.defs.pool.assets import raw_pool
from tests.conftest import REAL_DATA


def test_new_shard_requests_its_tags_and_embeddings_only(layout, instance, resources):
    path = layout.incoming_dir / "mt.jsonl"
    path.write_bytes((REAL_DATA / "mt_bench_questions.jsonl").read_bytes())
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.total_requested == 0
    instance.add_dynamic_partitions("pool_shards", ["mt.jsonl"])
    dg.materialize([raw_pool], partition_key="mt.jsonl", instance=instance, resources=resources)
    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert second.get_num_requested(dg.AssetKey("atomic_tags")) == 1
    assert second.get_num_requested(dg.AssetKey("sample_embeddings")) == 1
    for key in ("tag_vocabulary", "label_graph", "mig_selection"):
        assert second.get_num_requested(dg.AssetKey(key)) == 0  # no cron tick has passed
    third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
    assert third.total_requested == 0  # already handled: nothing runs twice


def test_automation_sensor_runs_by_default():
    sensor = defs.resolve_sensor_def("pool_automation")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
