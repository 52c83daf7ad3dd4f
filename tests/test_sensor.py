"""The incoming-files sensor: registration, versions of changed files, paths outside the pool."""

import hashlib
import json
import os
import time

import dagster as dg

from mig_assets.pool.sensors import SETTLE_SECONDS, incoming_shards_sensor
from mig_assets.resources import Warehouse

GOOD = '{"instruction": "Say hi", "output": "hi"}\n'


def settled(path):
    past = time.time() - SETTLE_SECONDS - 60
    os.utime(path, (past, past))
    return path


def tick(instance, layout, cursor=None):
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"warehouse": Warehouse(mig_home=str(layout.home))}
    ) as context:
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
