"""The incoming-files sensor: registration, versions of changed files, paths outside the pool."""

import hashlib
import json
import os
import time

import dagster as dg

from mig_assets.defs.pool.sensors import SETTLE_SECONDS, incoming_shards_sensor
from mig_assets.resources import Warehouse

GOOD = '{"instruction": "Say hi", "output": "hi"}\n'


def settled(path):
    past = time.time() - SETTLE_SECONDS - 60
    os.utime(path, (past, past))
    return path


def tick(instance, layout, cursor=None):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"warehouse": Warehouse(mig_home=str(layout.home))}) as context:
        result = incoming_shards_sensor(context)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions("pool_shards", list(request.partition_keys))
    return result


def test_new_files_become_partitions_with_run_requests(layout, instance):
    (layout.incoming_dir / "sub").mkdir()
    for name in ("a.jsonl", "sub/b c.json"):
        path = layout.incoming_dir / name
        path.write_text(GOOD)
        settled(path)
    (layout.incoming_dir / ".hidden.jsonl").write_text(GOOD)
    (layout.incoming_dir / "partial.jsonl.part").write_text(GOOD)

    result = tick(instance, layout)
    unsafe_key = "sub__b_c.json-" + hashlib.sha256(b"sub/b c.json").hexdigest()[:10]  # made safe: a hash suffix
    assert sorted(r.partition_key for r in result.run_requests) == ["a.jsonl", unsafe_key]
    assert sorted(result.dynamic_partitions_requests[0].partition_keys) == ["a.jsonl", unsafe_key]
    assert set(instance.get_dynamic_partitions("pool_shards")) == {"a.jsonl", unsafe_key}

    again = tick(instance, layout, result.cursor)
    assert again.run_requests == [] and again.dynamic_partitions_requests == []
    assert "no new or changed shard files" in again.skip_reason.skip_message


def test_a_changed_file_is_requested_again_as_a_new_version(layout, instance):
    path = layout.incoming_dir / "a.jsonl"
    path.write_text(GOOD)
    settled(path)
    first = tick(instance, layout)
    path.write_text(GOOD + '{"instruction": "More"}\n')
    os.utime(path, (time.time() - 30, time.time() - 30))  # a later mtime, still settled
    second = tick(instance, layout, first.cursor)
    [request] = second.run_requests
    assert request.partition_key == "a.jsonl" and request.run_key != first.run_requests[0].run_key
    assert second.dynamic_partitions_requests == []  # same partition, new version


def test_a_file_still_being_written_waits_for_the_next_tick(layout, instance):
    (layout.incoming_dir / "fresh.jsonl").write_text(GOOD)
    result = tick(instance, layout)
    assert result.run_requests == []
    settled(layout.incoming_dir / "fresh.jsonl")
    assert [r.partition_key for r in tick(instance, layout, result.cursor).run_requests] == ["fresh.jsonl"]


def test_paths_outside_the_pool_are_refused_with_a_reason(layout, instance, tmp_path):
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text(GOOD)
    settled(outside)
    (layout.incoming_dir / "link.jsonl").symlink_to(outside)
    result = tick(instance, layout)
    assert result.run_requests == []
    assert "is outside" in result.skip_reason.skip_message and "link.jsonl" in result.skip_reason.skip_message
    assert instance.get_dynamic_partitions("pool_shards") == []


def test_cursor_is_plain_json(layout, instance):
    path = layout.incoming_dir / "a.jsonl"
    path.write_text(GOOD)
    settled(path)
    cursor = json.loads(tick(instance, layout).cursor)
    assert list(cursor) == ["a.jsonl"]


def test_a_symlink_loop_is_skipped_with_a_reason_and_other_files_still_ingest(layout, instance):
    (layout.incoming_dir / "loop.jsonl").symlink_to(layout.incoming_dir / "loop.jsonl")
    path = layout.incoming_dir / "ok.jsonl"
    path.write_text(GOOD)
    settled(path)
    result = tick(instance, layout)  # used to raise "RuntimeError: Symlink loop" on every tick
    assert [r.partition_key for r in result.run_requests] == ["ok.jsonl"]
    _, problems = layout.discover_shards()
    assert len(problems) == 1 and "loop.jsonl: cannot be resolved" in problems[0]


def test_a_tick_frees_the_pool_slot_of_a_run_whose_process_died(layout, tmp_path):
    """Under `dagster dev`, a killed run's slot kept every requested ingestion QUEUED."""
    import subprocess

    from dagster._core.events import (
        EngineEventData,  # fault injection: a run record as Dagster writes it
    )

    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "dagster").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:  # SQLite storage: pools are enforced
        run = instance.add_run(dg.DagsterRun(job_name="ingest_job", status=dg.DagsterRunStatus.STARTED))
        instance.report_engine_event("Executing steps in process", dagster_run=run, engine_event_data=EngineEventData.in_process(dead.pid))
        instance.event_log_storage.set_concurrency_slots("duckdb", 1)
        assert instance.event_log_storage.claim_concurrency_slot("duckdb", run.run_id, "raw_pool").is_claimed
        tick(instance, layout)
        assert instance.event_log_storage.get_concurrency_info("duckdb").claimed_slots == []
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
