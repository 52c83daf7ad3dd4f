"""Nothing lost, nothing stuck: the DuckDB catalog under fault injection (issue 14, part B).

A reader's lock held by another process, a truncated, zeroed or deleted ``mig.duckdb``, a shard's
Parquet deleted by hand and a ``'`` in MIG_HOME, through real DuckDB, Parquet, Dagster runs and the
CLI as a subprocess.
"""

import json
import subprocess
import sys
import time

import duckdb
import pyarrow as pa
import pytest

from mig_assets.core.store.layout import WarehouseLayout
from mig_assets.resources import Warehouse
from tests.conftest import REAL_DATA
from tests.test_cli import run_cli
from tests.test_selection_assets import (  # noqa: F401  (p2k_pool is a fixture)
    p2k_pool,
    run_mig,
)
from tests.test_sensor import settled, tick

HISTORY_TABLES = {
    "selections": "selection, version",
    "selection_members": "selection, version, rank",
    "selection_coverage": "selection, version, label",
    "selection_diffs": "selection, version, change, sample_id",
    "label_graph_labels": "label_id",
    "label_graph_edges": "src, dst",
    "tag_vocabulary": "tag",
}


class CatalogReader:
    """A ``duckdb -readonly mig.duckdb`` session held open in another process until stopped."""

    def __init__(self, path):
        script = (
            "import duckdb, sys, time\n"
            f"con = duckdb.connect({str(path)!r}, read_only=True)\n"
            "print(con.execute('SELECT count(*) FROM samples').fetchall()[0][0], flush=True)\n"
            "for line in sys.stdin:\n"  # each line: a query to answer with the session opened before
            "    print(con.execute(line).fetchall()[0][0], flush=True)\n"
        )
        self.process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.samples_seen = int(self.process.stdout.readline())  # the lock is held from here on

    def query(self, sql: str):
        self.process.stdin.write(sql + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def stop(self):
        self.process.stdin.close()
        self.process.wait(timeout=30)


def catalog_rows(path) -> dict[str, list]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {table: con.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall() for table, order in HISTORY_TABLES.items()}


def test_a_reader_holding_the_catalog_never_blocks_ingestion(tmp_path):
    home = tmp_path / "home"
    started = time.perf_counter()
    assert run_cli(["ingest", str(REAL_DATA / "xsample_example.jsonl")], home).returncode == 0
    first_seconds = time.perf_counter() - started
    catalog = home / "warehouse" / "mig.duckdb"
    reader = CatalogReader(catalog)
    try:
        started = time.perf_counter()
        done = run_cli(["ingest", str(REAL_DATA / "mt_bench_questions.jsonl")], home, timeout=100)  # today: fails after ~105 s
        seconds = time.perf_counter() - started
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["rows_kept"] > 0  # the JSON summary is printed
        assert seconds < first_seconds + 30, (seconds, first_seconds)  # no lock wait
        # the reader's session still answers, and sees the new shard (views read the Parquet)
        assert int(reader.query("SELECT count(*) FROM samples")) > reader.samples_seen
    finally:
        reader.stop()
    with duckdb.connect(str(catalog), read_only=True) as con:
        assert con.execute("SELECT count(DISTINCT shard) FROM samples").fetchall()[0][0] == 2
        assert con.execute("SELECT count(*) FROM shards").fetchall()[0][0] == 2


def test_a_new_view_is_published_while_a_reader_holds_the_catalog(layout):
    """The catalog file is replaced (built beside it, renamed), never opened for writing."""
    (layout.incoming_dir / "a.jsonl").write_text('{"instruction": "Say hi", "output": "hi"}\n')
    from mig_assets.core.ingest.shards import ingest_shard
    from mig_assets.core.store.catalog import publish_catalog, replace_table

    ingest_shard(layout, "a.jsonl", layout.incoming_dir / "a.jsonl", run_id="test")
    assert publish_catalog(layout) == "created"
    assert publish_catalog(layout) == "unchanged"  # nothing to write: the file is not touched
    reader = CatalogReader(layout.duckdb_path)
    try:
        warehouse = Warehouse(mig_home=str(layout.home))
        with warehouse.connect() as con:
            replace_table(con, "tag_vocabulary", pa.table({"tag": ["greeting"], "n_samples": [1]}))
        with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:  # a new session sees the new table
            assert con.execute("SELECT * FROM tag_vocabulary").fetchall() == [("greeting", 1)]
        assert reader.query("SELECT count(*) FROM samples") == "1"  # the old session is undisturbed
    finally:
        reader.stop()


def corrupt(path, how: str) -> None:
    size = path.stat().st_size
    if how == "truncated":
        with open(path, "r+b") as f:
            f.truncate(size // 3)
    elif how == "zeroed":
        path.write_bytes(bytes(size))
    else:
        path.unlink()


@pytest.mark.slow
def test_a_corrupt_or_missing_catalog_is_rebuilt_with_the_selection_history(p2k_pool, layout, instance, resources):  # noqa: F811
    run_mig(p2k_pool, instance, resources, selection_config={"budget_count": 40, "budget_fraction": None})
    run_mig(p2k_pool, instance, resources, selection_config={"budget_count": 55, "budget_fraction": None})
    before = catalog_rows(layout.duckdb_path)
    assert [row[1] for row in before["selections"]] == [1, 2] and len(before["selection_members"]) == 95
    assert {row[4] for row in before["selection_diffs"]} == {"added"}  # version 2 adds 15 samples, with reasons
    for how in ("truncated", "zeroed", "deleted"):
        corrupt(layout.duckdb_path, how)
        done = run_cli(["repair"], layout.home)
        assert done.returncode == 0, (how, done.stderr)
        assert json.loads(done.stdout)["catalog"] == ("created" if how == "deleted" else "rebuilt")
        assert "Traceback" not in done.stderr
        assert catalog_rows(layout.duckdb_path) == before, how
    # the next run rebuilds it too, and numbers its version after the history it finds
    corrupt(layout.duckdb_path, "zeroed")
    run_mig(p2k_pool, instance, resources, selection_config={"budget_count": 55, "budget_fraction": None})
    after = catalog_rows(layout.duckdb_path)
    assert [row[1] for row in after["selections"]] == [1, 2, 3]
    assert [r for r in after["selection_members"] if r[1] < 3] == before["selection_members"]


def test_a_shard_parquet_deleted_by_hand_is_reported_and_restored(tmp_path, instance):
    home = tmp_path / "home"
    files = [REAL_DATA / "xsample_example.jsonl", REAL_DATA / "mt_bench_questions.jsonl"]
    assert run_cli(["ingest", *map(str, files)], home).returncode == 0
    layout = WarehouseLayout(home)
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        samples = con.execute("SELECT count(*) FROM samples").fetchall()[0][0]
    for path in layout.incoming_dir.iterdir():
        settled(path)
    cursor = tick(instance, layout).cursor

    layout.shard_file("raw_pool", "xsample_example.jsonl").unlink()
    assert tick(instance, layout, cursor).run_requests[0].partition_key == "xsample_example.jsonl"  # the sensor restores it
    done = run_cli(["repair"], home)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert list(report["missing_shard_files"]) == ["xsample_example.jsonl"]
    assert [s["shard"] for s in report["reingested"]] == ["xsample_example.jsonl"]
    assert "xsample_example.jsonl" in done.stderr and "missing" in done.stderr
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM samples").fetchall()[0][0] == samples
    assert tick(instance, layout, cursor).run_requests == []  # restored: nothing more to request

    layout.shard_file("quarantine", "mt_bench_questions.jsonl").unlink()
    (layout.incoming_dir / "mt_bench_questions.jsonl").unlink()  # and its source file is gone too
    done = run_cli(["repair"], home)
    assert done.returncode == 2
    assert "shard mt_bench_questions.jsonl cannot be restored" in done.stderr


def test_a_quote_in_mig_home_works(tmp_path):
    home = tmp_path / "it's home"
    done = run_cli(["ingest", str(REAL_DATA / "xsample_example.jsonl")], home)
    assert done.returncode == 0, done.stderr
    with duckdb.connect(str(home / "warehouse" / "mig.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM samples").fetchall()[0][0] == json.loads(done.stdout)["rows_kept"]
    assert run_cli(["repair"], home).returncode == 0


def test_an_old_style_catalog_keeps_its_tables_on_upgrade(layout):
    """Global tables stored inside mig.duckdb (the previous layout) are copied to Parquet first."""
    with duckdb.connect(str(layout.duckdb_path)) as con:
        con.execute("CREATE TABLE selections AS SELECT 'mig_selection' AS selection, 1 AS version")
        con.execute("CREATE TABLE selection_members AS SELECT 'mig_selection' AS selection, 1 AS version, 1 AS rank, 'abc' AS sample_id")
    with Warehouse(mig_home=str(layout.home)).connect() as con:
        assert con.execute("SELECT coalesce(max(version), 0) + 1 FROM selections").fetchall() == [(2,)]
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        assert con.execute("SELECT * FROM selection_members").fetchall() == [("mig_selection", 1, 1, "abc")]
        assert {v for (v,) in con.execute("SELECT view FROM catalog_views").fetchall()} == {"selections", "selection_members"}
