"""Issue 14 (part A), as a hostile user meets it: the CLI as a subprocess on a persistent MIG_HOME.

Nothing stuck: a killed ingest does not block the next one, a waiting CLI says what it waits for
and stops on Ctrl-C. Nothing lost: colliding names, damaged containers, leftovers of a crash.
"""

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster._core.events import (
    EngineEventData,  # fault injection: a run record as Dagster writes it
)

from tests.conftest import REPO_ROOT

GOOD = [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(10_000)]


def cli_env(home) -> dict:
    env = {**os.environ, "MIG_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    return env


def run_cli(args, home, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "mig_assets.cli", *map(str, args)],
        cwd=REPO_ROOT,
        env=cli_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(args, home, stderr=subprocess.PIPE):
    return subprocess.Popen(
        [sys.executable, "-m", "mig_assets.cli", *map(str, args)],
        cwd=REPO_ROOT,
        env=cli_env(home),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def persistent_instance(home) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home / "dagster"))


def wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def processes_running(argument: str) -> list[int]:
    """Pids of the live processes with ``argument`` on their command line (forked workers keep their
    parent's; a dead, unreaped one has an empty command line)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and argument.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:  # it ended meanwhile
            continue
    return pids


def test_a_killed_ingest_does_not_block_the_next_one(tmp_path):
    """kill -9 mid-ingest left the `duckdb` pool slot taken for good: the re-run never returned."""
    home = tmp_path / "home"
    big = write_jsonl(tmp_path / "big.jsonl", [{"instruction": f"q {i} " + "x" * 100, "output": f"a {i}"} for i in range(250_000)])
    shard_dir = home / "warehouse" / "raw_pool" / "shard=big.jsonl"
    first = start_cli(["ingest", big], home, stderr=subprocess.DEVNULL)
    wait_for(lambda: any(shard_dir.glob(".staging-*")), 120, "the first ingest to start writing")
    wait_for(lambda: len(processes_running(big)) >= 3, 60, "its two worker processes to start reading")
    first.send_signal(signal.SIGKILL)  # mid-ingest: its run holds the pool slot and a staging file
    first.wait()
    wait_for(lambda: not processes_running(big), 10, "the killed ingest's worker processes to die with it")
    assert any(shard_dir.glob(".staging-*")) and not (shard_dir / "part-0.parquet").exists()

    again = run_cli(["ingest", big], home, timeout=180)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["rows_kept"] == 250_000
    assert "is gone: marked failed" in again.stderr  # it says why the slot was free again
    assert not list(shard_dir.glob(".staging-*"))  # the dead run's staging file is cleaned
    with persistent_instance(home) as instance:
        statuses = sorted(r.status.value for r in instance.get_runs())
    assert statuses == ["FAILURE", "SUCCESS"]


@pytest.mark.slow
def test_a_waiting_ingest_says_what_it_waits_for_and_stops_on_ctrl_c(tmp_path):
    """A live run holding the pool slot (fault injection: a run record owned by a sleeping process)."""
    home = tmp_path / "home"
    assert run_cli(["ingest", write_jsonl(tmp_path / "a.jsonl", GOOD[:5])], home).returncode == 0
    holder, waiting = subprocess.Popen(["sleep", "300"]), None
    try:
        with persistent_instance(home) as instance:
            run = instance.add_run(dg.DagsterRun(job_name="holder", status=dg.DagsterRunStatus.STARTED))
            instance.report_engine_event(
                "Executing steps in process",
                dagster_run=run,
                engine_event_data=EngineEventData.in_process(holder.pid),
            )  # what Dagster's in-process executor records
            assert instance.event_log_storage.claim_concurrency_slot("duckdb", run.run_id, "raw_pool").is_claimed
        waiting = start_cli(["ingest", write_jsonl(tmp_path / "b.jsonl", GOOD[5:10])], home)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(waiting.stderr), daemon=True)
        reader.start()
        try:
            wait_for(lambda: any("waiting since" in line for line in lines), 120, "the waiting line")
        finally:
            waiting.send_signal(signal.SIGINT)
        [said] = [line for line in lines if "waiting since" in line]
        assert f"for a slot of the `duckdb` pool (limit 1), held by run {run.run_id} (started, pid {holder.pid}" in said
        assert waiting.wait(timeout=30) == 130
        reader.join(timeout=10)
        assert "mig-assets: interrupted\n" in lines

        holder.kill()  # the holder dies without freeing its slot: the next ingest reclaims it
        holder.wait()
        done = run_cli(["ingest", tmp_path / "b.jsonl"], home, timeout=180)
        assert done.returncode == 0, done.stderr
        assert f"released the `duckdb` pool slot (or claim) of run {run.run_id}: its process (pid {holder.pid}) is gone" in done.stderr
    finally:
        for process in (holder, waiting):
            if process is not None:
                process.kill()
                process.wait()


def test_names_that_sanitize_alike_keep_both_files(tmp_path):
    home, src = tmp_path / "home", tmp_path / "src"
    src.mkdir()
    names = ["my_file.jsonl", "my file.jsonl", "über.jsonl", "öber.jsonl"]
    files = [write_jsonl(src / name, GOOD[i * 2 : i * 2 + 2]) for i, name in enumerate(names)]
    done = run_cli(["ingest", *files], home)
    assert done.returncode == 0, done.stderr
    totals = json.loads(done.stdout)
    keys = [s["shard"] for s in totals["shards"]]
    assert len(set(keys)) == 4 and keys[0] == "my_file.jsonl"  # a plain name keeps its readable key
    assert totals["rows_kept"] == 8
    with duckdb.connect(str(home / "warehouse" / "mig.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM samples").fetchone()[0] == 8
        sources = {s for (s,) in con.execute("SELECT DISTINCT source_file FROM samples").fetchall()}
    assert sources == {f"incoming/{name}" for name in names}


def test_a_symlink_loop_and_a_dot_name_do_not_stop_ingestion(tmp_path):
    home = tmp_path / "home"
    incoming = home / "pool" / "incoming"
    incoming.mkdir(parents=True)
    (incoming / "loop.jsonl").symlink_to(incoming / "loop.jsonl")
    done = run_cli(["ingest", write_jsonl(tmp_path / "ok.jsonl", GOOD[:3])], home)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows_kept"] == 3

    dotted = run_cli(["ingest", write_jsonl(tmp_path / "..x.jsonl", GOOD[3:4])], home)
    assert dotted.returncode == 2 and "Traceback" not in dotted.stderr
    assert "..x.jsonl: a hidden file name (leading '.') is not a shard; rename it without the dot" in dotted.stderr
    with persistent_instance(home) as instance:
        assert instance.get_dynamic_partitions("pool_shards") == ["ok.jsonl"]  # no phantom partition


@pytest.mark.slow
def test_damaged_containers_keep_every_readable_record_and_exit_2(tmp_path):
    home, src = tmp_path / "home", tmp_path / "src"
    src.mkdir()
    body = "".join(json.dumps(r) + "\n" for r in GOOD).encode()
    packed = gzip.compress(body)
    (src / "truncated.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    (src / "plain.jsonl.gz").write_bytes(body[:2000])
    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.Table.from_pylist(GOOD[:400]), whole, row_group_size=100, compression="snappy")
    parquet = bytearray(whole.read_bytes())
    (src / "truncated.parquet").write_bytes(parquet[: len(parquet) // 2])
    page = pq.ParquetFile(whole).metadata.row_group(2).column(0).data_page_offset
    parquet[page + 20 : page + 120] = bytes(100)  # zero part of row group 2's first page
    (src / "corrupt_page.parquet").write_bytes(parquet)
    (src / "surrogate.json").write_text("[" + json.dumps(GOOD[0]) + ',\n{"instruction": "\\udc00", "output": "x"},\n' + json.dumps(GOOD[1]) + "]")
    (src / "ok.jsonl").write_text(json.dumps({"instruction": "an unrelated question", "output": "yes"}) + "\n")
    done = run_cli(["ingest", *sorted(src.iterdir())], home)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    totals = json.loads(done.stdout)
    assert totals["rows_read"] == totals["rows_kept"] + totals["rows_quarantined"] + totals["duplicates"]
    by_file = {s["source_file"]: s for s in totals["shards"]}
    truncated = by_file["incoming/truncated.jsonl.gz"]
    assert truncated["rows_kept"] > 4000 and truncated["rows_quarantined"] == 1  # all that decompresses
    assert by_file["incoming/surrogate.json"]["rows_kept"] == 0  # its two good rows are duplicates of GOOD[0:2]
    assert by_file["incoming/surrogate.json"]["duplicates"] == 2 and by_file["incoming/surrogate.json"]["rows_quarantined"] == 1
    damaged = [line for line in done.stderr.splitlines() if line.startswith("mig-assets: ")]
    assert sorted(line.split(" is damaged: ")[0] for line in damaged) == [
        f"mig-assets: incoming/{name}" for name in ("corrupt_page.parquet", "plain.jsonl.gz", "truncated.jsonl.gz", "truncated.parquet")
    ]  # one line per damaged file; the surrogate only spoils its own element
    corrupt = by_file["incoming/corrupt_page.parquet"]
    assert corrupt["rows_quarantined"] == 1 and corrupt["rows_read"] == 301  # rows 201-300 are one quarantined record
    with duckdb.connect(str(home / "warehouse" / "mig.duckdb"), read_only=True) as con:
        reasons = [r for (r,) in con.execute("SELECT reason FROM quarantine ORDER BY source_file").fetchall()]
    assert any(r.startswith("incoming/truncated.parquet, line 1, field (file): not a readable Parquet file") for r in reasons)
    assert any("incoming/truncated.jsonl.gz, line " in r and "(byte " in r for r in reasons)


def test_explain_errors_are_clear(tmp_path):
    home = tmp_path / "home"
    missing = run_cli(["explain", "0123456789abcdef"], home)
    assert missing.returncode == 2 and "no catalog at" in missing.stderr and "Traceback" not in missing.stderr
    assert run_cli(["ingest", write_jsonl(tmp_path / "a.jsonl", GOOD[:3])], home).returncode == 0
    with duckdb.connect(str(home / "warehouse" / "mig.duckdb"), read_only=True) as con:
        sample_id = con.execute("SELECT min(sample_id) FROM samples").fetchone()[0]
    found = run_cli(["explain", sample_id[:12].upper()], home)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["sample_id"] == sample_id
    unknown = run_cli(["explain", sample_id, "--selection", "nope"], home)
    assert unknown.returncode == 2 and "no selection has been made yet" in unknown.stderr
