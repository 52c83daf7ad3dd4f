"""The mig-assets command line, run as a user would (a real subprocess, a persistent instance)."""

import json
import os
import subprocess
import sys

import duckdb

from tests.conftest import REAL_DATA, REPO_ROOT


def run_cli(args, mig_home, **kwargs):
    env = {**os.environ, "MIG_HOME": str(mig_home)}
    env.pop("DAGSTER_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "mig_assets.cli", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, **kwargs
    )


def test_ingest_prints_totals_and_is_idempotent(tmp_path):
    home = tmp_path / "home"
    files = [str(REAL_DATA / "xsample_example.jsonl"), str(REAL_DATA / "mt_bench_questions.jsonl")]
    first = run_cli(["ingest", *files], home)
    assert first.returncode == 0, first.stderr
    totals = json.loads(first.stdout)
    assert (totals["rows_read"], totals["rows_kept"], totals["rows_quarantined"], totals["duplicates"]) == (90, 89, 1, 0)
    assert "xsample_example.jsonl, line 3, field (line): malformed JSON" in first.stderr
    second = json.loads(run_cli(["ingest", *files], home).stdout)
    assert {k: second[k] for k in ("rows_read", "rows_kept", "rows_quarantined", "duplicates")} == {
        k: totals[k] for k in ("rows_read", "rows_kept", "rows_quarantined", "duplicates")
    }
    with duckdb.connect(str(home / "warehouse" / "mig.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM samples").fetchone()[0] == 89
    # runs are recorded in the persistent instance the UI reads
    runs = list((home / "dagster" / "storage").iterdir())
    assert len(runs) >= 4


def test_ingest_reports_a_missing_file_clearly(tmp_path):
    done = run_cli(["ingest", str(tmp_path / "nope.jsonl")], tmp_path / "home")
    assert done.returncode == 2 and "nope.jsonl: no such file" in done.stderr


def test_demo_ingests_the_demo_pool(tmp_path):
    done = run_cli(["demo"], tmp_path / "home")
    assert done.returncode == 0, done.stderr
    totals = json.loads(done.stdout[: done.stdout.rindex("}") + 1])
    assert len(totals["shards"]) == 4 and totals["rows_quarantined"] == 3 and totals["duplicates"] >= 5
    assert totals["rows_read"] == totals["rows_kept"] + totals["rows_quarantined"] + totals["duplicates"]
