"""What `dagster dev` would do on a MIG_HOME, in a fresh process, with Dagster's own test helpers.

``python -m tests.automation_probe MIG_HOME CURSOR_FILE``: loads the project's definitions (the
settings file only, as the UI reads it), evaluates ``incoming_shards_sensor`` and the automation
conditions against the persistent instance ``MIG_HOME/dagster``, launches what they request as the
daemon would (automation runs carry the automation tag), keeps the automation cursor in
CURSOR_FILE between calls, and prints one JSON object: what was requested and how each run ended.
"""

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg


def main(home: str, cursor_file: str) -> dict:
    from mig_assets.definitions import defs, resources
    from mig_assets.defs.pool.sensors import incoming_shards_sensor
    from mig_assets.orchestration.automation import AUTOMATION_RUN_TAG

    instance = dg.DagsterInstance.get()
    cursor_path = Path(cursor_file)
    state = json.loads(cursor_path.read_text()) if cursor_path.exists() else {"sensor": None, "automation": None}

    context = dg.build_sensor_context(instance=instance, cursor=state["sensor"], resources={"warehouse": resources["warehouse"]})
    sensor = incoming_shards_sensor(context)
    ingested = []
    for request in sensor.run_requests:
        outcome = defs.resolve_job_def("ingest_job").execute_in_process(
            partition_key=request.partition_key, instance=instance, tags=request.tags, raise_on_error=False
        )
        ingested.append({"shard": request.partition_key, "success": outcome.success})
    state["sensor"] = sensor.cursor

    # a time far from the nightly cron: only the eager per-shard conditions can fire
    evaluation_time = dt.datetime.now(dt.timezone.utc).replace(hour=12, minute=0)
    cursor = dg.deserialize_value(state["automation"]) if state["automation"] else None
    evaluation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor, evaluation_time=evaluation_time)
    state["automation"] = dg.serialize_value(evaluation.cursor)
    by_partition: dict = {}
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        for partition in evaluation.get_requested_partitions(key):
            by_partition.setdefault(partition, []).append(key)
    automated = []
    for partition, keys in sorted(by_partition.items(), key=lambda item: str(item[0])):
        outcome = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance,
            partition_key=partition,
            asset_selection=keys,
            tags={AUTOMATION_RUN_TAG: "true"},
            raise_on_error=False,
        )
        failure = next((e.event_specific_data.error.message for e in outcome.all_events if e.is_step_failure), "")
        automated.append({"assets": sorted(k.to_user_string() for k in keys), "shard": partition, "success": outcome.success, "failure": failure})
    cursor_path.write_text(json.dumps(state))
    return {"sensor_requests": [r.partition_key for r in sensor.run_requests], "ingested": ingested, "automation_runs": automated}


def clean_env(home) -> dict:
    """The environment of a user who set no project variable: only MIG_HOME says where the project is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIG_") and k != "DAGSTER_HOME"}
    return env | {"MIG_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}


def ui_tick(home, cursor_file):
    """One sensor tick and one automation evaluation, as `dagster dev` would run them, in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.automation_probe", str(home), str(cursor_file)],
        cwd=Path(__file__).resolve().parents[1],
        env=clean_env(home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def tag_files(home) -> dict[str, str]:
    return {
        path.parent.name.removeprefix("shard="): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((home / "warehouse" / "atomic_tags").glob("shard=*/part-0.parquet"))
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
