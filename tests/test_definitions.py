"""The whole Definitions loads fast, validates, and exposes what the UI needs."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

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
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Validation successful" in done.stdout + done.stderr
    assert time.perf_counter() - started < 60


def test_dg_cli_checks_and_lists_the_project(tmp_path):
    """`dg check defs` and `dg list defs` (dagster-dg-cli, `[tool.dg]` in pyproject.toml) load the same Definitions."""
    dg_cli = Path(sys.executable).with_name("dg")
    # dg's console script does not put the working directory on sys.path: import this checkout
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "MIG_HOME": str(tmp_path / "home"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    checked = subprocess.run([dg_cli, "check", "defs"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr

    listed = subprocess.run([dg_cli, "list", "defs", "--json"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    listed_assets = {asset["asset_key"] for asset in json.loads(listed.stdout)["assets"]}
    expected = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json; from mig_assets.definitions import defs; "
            "print(json.dumps([k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()]))",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert expected.returncode == 0, expected.stderr
    assert listed_assets == set(json.loads(expected.stdout))
    assert {"raw_pool", "atomic_tags", "label_graph", "knowledge_tree"} <= listed_assets


def test_no_model_library_is_imported_when_loading_definitions():
    code = (
        "import sys, mig_assets.definitions; heavy = [m for m in ('torch', 'vllm', 'sentence_transformers', 'transformers') if m in sys.modules]; print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr
