"""The whole Definitions loads fast, validates, and exposes what the UI needs."""

import os
import subprocess
import sys
import time

import dagster as dg

from tests.conftest import REPO_ROOT


def test_definitions_load_and_validate():
    from mig_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "raw_pool" in keys
    assert defs.resolve_job_def("ingest_job") is not None
    assert defs.resolve_job_def("tag_job").executor_def.name == "in_process"
    assert defs.resolve_sensor_def("incoming_shards_sensor").default_status == dg.DefaultSensorStatus.RUNNING


def test_dagster_cli_validates_the_project_in_seconds(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "MIG_HOME": str(tmp_path / "home")}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Validation successful" in done.stdout + done.stderr
    assert time.perf_counter() - started < 60


def test_no_model_library_is_imported_when_loading_definitions():
    code = (
        "import sys, mig_assets.definitions; "
        "heavy = [m for m in ('torch', 'vllm', 'sentence_transformers', 'transformers') if m in sys.modules]; "
        "print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr
