"""The mig-assets command line, run as a user would (a real subprocess, a persistent instance)."""

import json
import os
import subprocess
import sys

import duckdb
import pytest

from tests.automation_probe import tag_files, ui_tick
from tests.conftest import MIG_FIXTURES, REAL_DATA, REPO_ROOT


def run_cli(args, mig_home, timeout=900, **kwargs):
    env = {**os.environ, "MIG_HOME": str(mig_home)}
    env.pop("DAGSTER_HOME", None)
    return subprocess.run([sys.executable, "-m", "mig_assets.cli", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.mark.slow
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
    # runs are recorded in the persistent instance the UI reads: one range run per ingest here
    runs = list((home / "dagster" / "storage").iterdir())
    assert len(runs) >= 2 and len({shard["run_id"] for shard in totals["shards"]}) == 1


def test_ingest_of_a_block_of_shards_is_one_range_run_the_first_registered_winning(tmp_path):
    """Several files: one raw_pool run over their range (read in parallel), each shard's
    materialization with its own figures, repeats won by the first registered shard."""
    home = tmp_path / "home"
    lines = (REAL_DATA / "xsample_example.jsonl").read_text().splitlines()
    files = []
    for i, chunk in enumerate([lines[:6], lines[3:], lines[:2]]):  # the later files repeat samples of the first
        files.append(tmp_path / f"z{i}.jsonl")
        files[-1].write_text("\n".join(chunk) + "\n")
    done = run_cli(["ingest", *map(str, files)], home)
    assert done.returncode == 0, done.stderr
    totals = json.loads(done.stdout)
    shards = [shard["shard"] for shard in totals["shards"]]
    assert len({shard["run_id"] for shard in totals["shards"]}) == 1  # one run for the block
    assert [shard["rows_read"] for shard in totals["shards"]] == [6, len(lines) - 3, 2]  # each shard its own figures
    assert totals["rows_read"] == totals["rows_kept"] + totals["rows_quarantined"] + totals["duplicates"]
    with duckdb.connect(str(home / "warehouse" / "mig.duckdb"), read_only=True) as con:
        owners = {
            owner for (owner,) in con.execute("SELECT DISTINCT split_part(duplicate_of, ':', 1) FROM raw_pool_rows WHERE duplicate_of IS NOT NULL").fetchall()
        }
    assert owners == {shards[0]}  # repeats of the first file's samples are its duplicates
    assert totals["shards"][2]["duplicates"] == 2


def test_ingest_reports_a_missing_file_clearly(tmp_path):
    done = run_cli(["ingest", str(tmp_path / "nope.jsonl")], tmp_path / "home")
    assert done.returncode == 2 and "nope.jsonl: no such file" in done.stderr


@pytest.mark.slow
@pytest.mark.llm
# two real engine starts and about 400 real generations on one core: 3 min on a quiet machine, over
# 10 on the slow days CI has seen; the run's own limit comes first so its stderr is kept
@pytest.mark.timeout(1800)
def test_demo_ingests_tags_and_selects(tmp_path):
    home = tmp_path / "home"
    done = run_cli(["demo"], home, timeout=1700)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    totals = summary["ingest"]
    assert len(totals["shards"]) == 4 and totals["rows_quarantined"] == 3 and totals["duplicates"] >= 5
    assert totals["rows_read"] == totals["rows_kept"] + totals["rows_quarantined"] + totals["duplicates"]
    mig = summary["assets"]["mig_selection"]
    export = home / "exports" / "mig_selection" / "v0001"
    assert mig["export_dir"] == str(export) and mig["dagster/row_count"] > 0
    assert len((export / "data.jsonl").read_text().splitlines()) == mig["dagster/row_count"]
    assert "mig_selection" in done.stderr  # where the selected subsets are
    assert "tagged (vllm backend)" in done.stderr  # the default demo tags with the real engine
    with duckdb.connect(str(home / "warehouse" / "mig.duckdb"), read_only=True) as con:
        backends = con.execute("SELECT backend, count(*) FROM atomic_tags GROUP BY ALL").fetchall()
        failed = con.execute("SELECT count(*) FROM atomic_tags WHERE status = 'failed'").fetchone()[0]
    assert [b for b, _ in backends] == ["vllm"] and failed <= 0.05 * sum(n for _, n in backends)
    assert 'backend: "vllm"' in (home / "mig.yaml").read_text()  # recorded where the UI reads it

    # `make dev` afterwards, with no variable set: nothing is re-ingested or re-tagged
    tags_before = tag_files(home)
    cursor = tmp_path / "ui_cursor.json"
    assert ui_tick(home, cursor) == {"sensor_requests": [], "ingested": [], "automation_runs": []}
    assert ui_tick(home, cursor)["automation_runs"] == [] and tag_files(home) == tags_before
    aligned = summary["assets"]["tags_aligned_5pct"]
    assert aligned["kl_target_selection"] <= summary["assets"]["tags_5pct"]["kl_target_selection"]

    compared = run_cli(["compare", "--count", "15"], home)
    assert compared.returncode == 0, compared.stderr
    table = compared.stdout
    for method in ("mig", "tags", "tags_aligned", "random", "top_quality", "deita", "instag", "kcenter"):
        assert f"| {method} | 15 |" in table, (method, table)
    assert (home / "exports" / "comparison" / "v0001" / "report.html").exists()


def test_sample_is_a_drop_in_for_the_reference_cli(tmp_path):
    case = json.loads((MIG_FIXTURES / "expected.json").read_text())["norm"]
    out = tmp_path / "selected.jsonl"
    args = [
        "sample",
        str(MIG_FIXTURES / case["pool"]),
        "--out",
        str(out),
        "-n",
        str(case["n"]),
        "--valid-tag-path",
        str(MIG_FIXTURES / "valid_tags.json"),
        "--label-graph-type",
        "sim",
        "--label-embeddings",
        str(MIG_FIXTURES / "p2k"),
        "--sim-threshold",
        str(case["tau"]),
        "--prop-weight",
        str(case["prop_weight"]),
        "--norm",
        "--phi-type",
        "pow",
        "--phi-a",
        str(case["phi_a"]),
        "--phi-b",
        str(case["phi_b"]),
        "--batch-size",
        "32768",
        "--sampler-type",
        "mig",
    ]
    done = run_cli(args, tmp_path / "home")
    assert done.returncode == 0, done.stderr
    lines = out.read_bytes().splitlines()
    assert [json.loads(line)["_id"] for line in lines] == case["order"]
    pool_lines = set((MIG_FIXTURES / case["pool"]).read_bytes().splitlines())
    assert all(line in pool_lines for line in lines)  # the input records, unchanged
    first_bytes = out.read_bytes()
    assert run_cli(args, tmp_path / "home").returncode == 0 and out.read_bytes() == first_bytes


def test_sample_reports_labels_without_embeddings(tmp_path):
    (tmp_path / "tiny.labels.json").write_text('["some other label"]')
    import numpy as np

    np.save(tmp_path / "tiny.emb.npy", np.ones((1, 4), dtype=np.float32))
    done = run_cli(
        ["sample", str(MIG_FIXTURES / "p2k.jsonl"), "--out", str(tmp_path / "o.jsonl"), "-n", "5", "--label-embeddings", str(tmp_path / "tiny")],
        tmp_path / "home",
    )
    assert done.returncode == 2 and "have no embedding" in done.stderr
