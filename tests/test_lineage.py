"""Lineage that stays true: a selection version's inputs are kept, `explain` answers from them and
says what changed since (re-tag, re-score, replaced shard file). Real Parquet, DuckDB, Dagster
materializations in a persistent instance, and the CLI as a subprocess."""

import hashlib
import json
import os
import subprocess
import sys
from importlib import resources as package_files

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mig_assets.core.outputs.explain import explain
from mig_assets.core.selection.lineage import inputs_path, read_facts
from mig_assets.core.store.catalog import open_catalog
from mig_assets.core.tagging.rows import query_text
from mig_assets.defs.quality.assets import build_quality_scores
from mig_assets.defs.tagging.assets import build_atomic_tags
from tests.conftest import MIG_FIXTURES, REPO_ROOT, materialize_shards
from tests.fakes import FakeTagger
from tests.fakes_quality import FakeScorer

SHARD = "pool.jsonl"
N_LINES = 600
BUDGET = {"budget_count": 30, "budget_fraction": None}


@pytest.fixture
def persistent(layout, monkeypatch):
    """The instance the CLI finds: ``$MIG_HOME/dagster`` with the project's dagster.yaml."""
    home = layout.home / "dagster"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(package_files.files("mig_assets").joinpath("dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        yield instance


@pytest.fixture
def pool(layout, persistent, resources):
    """The first 600 records of the reference pool, ingested, tagged and scored from its annotations."""
    lines = (MIG_FIXTURES / "p2k.jsonl").read_text().splitlines()[:N_LINES]
    (layout.incoming_dir / SHARD).write_text("\n".join(lines) + "\n")
    materialize_shards(persistent, resources, layout, [layout.incoming_dir / SHARD])
    retag(persistent, resources, resources["tagger"])
    rescore(persistent, resources, resources["scorer"])
    return lines


def retag(instance, resources, tagger) -> str:
    result = dg.materialize([build_atomic_tags(tagger.version())], partition_key=SHARD, instance=instance, resources=resources | {"tagger": tagger})
    assert result.success
    return result.run_id


def rescore(instance, resources, scorer) -> str:
    result = dg.materialize([build_quality_scores(scorer.version())], partition_key=SHARD, instance=instance, resources=resources | {"scorer": scorer})
    assert result.success
    return result.run_id


def select(instance, resources, tau: float = 0.9, nodes=("tag_vocabulary", "tag_embeddings", "label_graph", "mig_selection")):
    """tag_vocabulary -> tag_embeddings (the reference's label vectors) -> label_graph -> mig_selection."""
    from mig_assets.definitions import defs

    ops = {
        "tag_embeddings": {"config": {"label_embeddings_prefix": str(MIG_FIXTURES / "p2k")}},
        "label_graph": {"config": {"tau": tau, "valid_tag_path": str(MIG_FIXTURES / "valid_tags.json")}},
        "mig_selection": {"config": BUDGET},
    }
    run_config = {"ops": {name: config for name, config in ops.items() if name in nodes}}
    assets = list(defs.assets)
    result = dg.materialize(
        assets,
        selection=[a for a in assets if a.key.to_user_string() in nodes],
        instance=instance,
        resources=resources,
        run_config=run_config,
    )
    assert result.success
    return result.asset_materializations_for_node("mig_selection")[0]


def cli_explain(layout, sample_id: str, version: int) -> dict:
    env = {**os.environ, "MIG_HOME": str(layout.home), "DAGSTER_HOME": str(layout.home / "dagster")}
    done = subprocess.run(
        [sys.executable, "-m", "mig_assets.cli", "explain", sample_id[:16], "--selection", "mig_selection", "--version", str(version)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def tags_code_version(tagger_version: str) -> str:
    """atomic_tags' code version for a tagger version, as the asset factory sets it."""
    assets_def = build_atomic_tags(tagger_version)
    return assets_def.code_versions_by_key[assets_def.key]


def members(layout, version: int) -> list[str]:
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        return [
            sid
            for (sid,) in con.execute(
                "SELECT sample_id FROM selection_members WHERE selection = 'mig_selection' AND version = ? ORDER BY rank", [version]
            ).fetchall()
        ]


def current_tags(layout) -> dict[str, list[str]]:
    with open_catalog(layout) as con:  # imported or a model's, as every reader sees them
        return dict(con.execute("SELECT sample_id, tags FROM atomic_tags WHERE shard = ?", [SHARD]).fetchall())


@pytest.mark.slow
def test_retag_explain_v1_shows_v1_tags_and_the_change_v2_the_new_tags(layout, persistent, resources, pool):
    first_tag_run = (
        persistent.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("atomic_tags"), asset_partitions=[SHARD]), limit=1).records[0].run_id
    )
    select(persistent, resources)
    top = members(layout, 1)[0]
    v1_tags = current_tags(layout)
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:  # a sample v1 did not pick, explained before the re-tag
        rejected = con.execute(
            "SELECT sample_id FROM atomic_tags WHERE len(tags) > 1 AND sample_id NOT IN (SELECT sample_id FROM selection_members) ORDER BY sample_id LIMIT 1"
        ).fetchall()[0][0]
        rejected_before = explain(con, rejected, "mig_selection", 1)["selection"]

    # re-tag with another tagger: an LLM (fake) answering each sample with the next sample's imported tags
    samples = pq.read_table(layout.shard_file("raw_pool", SHARD), columns=["messages", "imported_tags"]).to_pylist()
    script = {query_text(s["messages"], False): [json.dumps({"tags": samples[(i + 1) % len(samples)]["imported_tags"]})] for i, s in enumerate(samples)}
    retag_run = retag(persistent, resources, FakeTagger(script_json=json.dumps(script)))
    v2_tags = current_tags(layout)
    assert v2_tags[top] != v1_tags[top] and v2_tags[rejected] != v1_tags[rejected]
    v2_meta = select(persistent, resources, tau=0.8)  # another label graph too: v1's is in its snapshot

    old = cli_explain(layout, top, 1)
    assert old["tags"]["tags"] == v1_tags[top] and old["tags"]["tagger"] == "imported"
    assert old["tags"]["run_id"] == first_tag_run
    change = old["changed_since_version"]["tags"]
    assert (change["before"], change["after"]) == (v1_tags[top], v2_tags[top])
    assert change["tagger_before"] == "imported" and change["tagger_after"].startswith("vllm:fake-model")
    assert (change["run_at_version"], change["changed_by_run"]) == (first_tag_run, retag_run)
    assert (change["code_version_before"], change["code_version_after"]) == (
        tags_code_version("imported"),
        tags_code_version(FakeTagger(script_json=json.dumps(script)).version()),
    )
    assert old["selection"]["selected"] and old["selection"]["rank"] == 1
    assert old["current"]["tags"]["tags"] == v2_tags[top]
    graph_change = old["changed_since_version"]["upstream"]["label_graph"]  # rebuilt from the new tags, at tau 0.8
    assert graph_change["run_at_version"] == old["upstream_at_version"]["label_graph"]["run_id"] != graph_change["changed_by_run"]
    assert not graph_change["same_data_version"]  # its inputs' data versions moved with the re-tag

    new = cli_explain(layout, top, 2)
    assert new["tags"]["tags"] == v2_tags[top] and new["tags"]["tagger"].startswith("vllm:fake-model")
    assert new["changed_since_version"] == {} and new["tags"]["run_id"] == retag_run

    # a sample v1 did not pick: its final gain is recomputed from v1's inputs, as before the re-tag
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        rejected_after = explain(con, rejected, "mig_selection", 1)
    assert rejected_after["changed_since_version"]["tags"]["after"] == v2_tags[rejected]
    assert not rejected_after["selection"]["selected"]
    assert rejected_after["selection"]["gain_at_end"] == rejected_before["gain_at_end"]
    assert rejected_after["selection"]["gain_at_end"] <= rejected_after["selection"]["last_pick_gain"]

    # the same fact in the next version's metadata and report page
    changed = v2_meta.metadata["inputs_changed_since_previous"].value
    assert "tags" in changed and retag_run in changed and "vllm:fake-model" in changed and "| label_graph | data version " in changed
    report = (layout.exports_dir / "mig_selection" / "v0002" / "report.html").read_text()
    assert "inputs changed since version 1" in report and retag_run in report


@pytest.mark.slow
def test_rescore_explain_v1_shows_v1_weight_and_the_change(layout, persistent, resources, pool):
    select(persistent, resources)
    top = members(layout, 1)[0]
    weight_v1 = pq.read_table(inputs_path(layout.warehouse_dir, "mig_selection", 1)).to_pylist()[0]
    assert weight_v1["sample_id"] == top and weight_v1["weight_origin"].startswith("quality_scores (imported")
    rescore_run = rescore(persistent, resources, FakeScorer())
    new_score = {r["sample_id"]: r["score"] for r in pq.read_table(layout.shard_file("quality_scores", SHARD)).to_pylist()}[top]
    assert new_score != weight_v1["weight"]
    v2_meta = select(persistent, resources)

    old = cli_explain(layout, top, 1)
    assert old["quality"]["weight"] == weight_v1["weight"] and "Deita" in old["quality"]["scorer"]
    change = old["changed_since_version"]["quality"]
    assert (change["score_before"], change["score_after"]) == (weight_v1["weight"], new_score)
    assert "fake-scorer" in change["scorer_after"] and change["changed_by_run"] == rescore_run
    assert "tags" not in old["changed_since_version"]

    new = cli_explain(layout, top, 2)
    assert new["changed_since_version"] == {} and new["quality"]["weight"] == new_score
    assert "fake-scorer" in new["quality"]["origin"]
    assert rescore_run in v2_meta.metadata["inputs_changed_since_previous"].value
    v3_meta = select(persistent, resources, nodes=("mig_selection",))  # nothing changed since v2
    assert v3_meta.metadata["inputs_changed_since_previous"].value == "no input of v2's members changed"


@pytest.mark.slow
def test_replaced_shard_file_explain_v1_still_shows_the_raw_record_it_used(layout, persistent, resources, pool):
    select(persistent, resources)
    top, gone = members(layout, 1)[:2]
    old_file_sha = hashlib.sha256((layout.incoming_dir / SHARD).read_bytes()).hexdigest()
    facts = read_facts(inputs_path(layout.warehouse_dir, "mig_selection", 1))
    assert set(facts["shards"][SHARD]) == {"raw_pool", "atomic_tags", "quality_scores"} and facts["inputs"]["label_graph"]["data_version"]
    assert facts["shards"][SHARD]["atomic_tags"]["code_version"] == tags_code_version("imported") and facts["tag_embedding_model"] == "precomputed:p2k"
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        line_of = dict(con.execute("SELECT sample_id, line_no FROM samples").fetchall())
    # a new version of the file: the top sample's record gets a new id (same dialog, same sample_id),
    # the second member's record is gone
    lines = list(pool)
    top_line = lines[line_of[top] - 1]
    record = json.loads(top_line)
    record["_id"] = "renamed-in-the-new-file"
    new_top_line = lines[line_of[top] - 1] = json.dumps(record)
    del lines[line_of[gone] - 1]
    (layout.incoming_dir / SHARD).write_text("\n".join(lines) + "\n")
    reingest = materialize_shards(persistent, resources, layout, [layout.incoming_dir / SHARD])[SHARD]["result"].run_id
    retag(persistent, resources, resources["tagger"])
    rescore(persistent, resources, resources["scorer"])
    v2_meta = select(persistent, resources)

    old = cli_explain(layout, top, 1)
    assert old["raw_record"]["text"] == top_line and old["source"]["original_id"] == json.loads(top_line)["_id"]
    assert old["source"]["file_sha256"] == old_file_sha
    change = old["changed_since_version"]["raw_record"]
    assert change["file_sha256_before"] == old_file_sha and change["changed_by_run"] == reingest
    assert change["sha256_before"] == hashlib.sha256(top_line.encode()).hexdigest()
    assert old["current"]["raw_record"] == new_top_line

    removed = cli_explain(layout, gone, 1)  # no shard holds it any more: answered from v1's inputs alone
    assert removed["raw_record"]["text"] == pool[line_of[gone] - 1] and removed["current"] is None
    assert "removed_from_pool" in removed["changed_since_version"] and removed["selection"]["selected"]

    new = cli_explain(layout, top, 2)
    assert new["raw_record"]["text"] == new_top_line
    assert new["changed_since_version"] == {}
    changed = v2_meta.metadata["inputs_changed_since_previous"].value
    assert "raw_record" in changed and "removed_from_pool" in changed and reingest in changed


def test_snapshot_rows_weights_origins_and_changes(tmp_path):
    """The snapshot's own rules on hand-made rows: rank order, the weight the selection used and its
    origin (scored, imported, median fill), left-out samples, raw records of members only, and the
    change report (a median fill is not a score, so staying unscored is no change)."""
    from mig_assets.core.selection.input_changes import input_changes
    from mig_assets.core.selection.lineage import (
        INPUTS_SCHEMA,
        read_inputs_row,
        version_inputs,
        write_inputs,
    )

    def row(sid, **values):
        base = {name: None for name in INPUTS_SCHEMA.names} | {
            "sample_id": sid,
            "shard": "a.jsonl",
            "tags": ["x"],
            "tag_status": "ok",
            "tagger": "imported",
            "raw": f'{{"id": "{sid}"}}',
        }
        return base | values

    current = pa.Table.from_pylist(
        [
            row("s1", weight=3.0, weight_origin="quality_scores (logprob:m deita-v1)", scorer="logprob:m deita-v1"),
            row("s2", weight=2.0, weight_origin="imported Deita annotation"),
            row("s3"),  # no score: gets the median
            row("s4", tag_status="failed", tag_reason="backend error", tags=[], weight=5.0, weight_origin="imported Deita annotation"),
        ],
        schema=INPUTS_SCHEMA,
    )
    snapshot = version_inputs(current, ["s1", "s2", "s3"], np.array([3.0, 2.0, 2.5]), 2.5, ["s2", "s1"])
    rows = snapshot.to_pylist()
    assert [r["sample_id"] for r in rows] == ["s2", "s1", "s3", "s4"] and [r["rank"] for r in rows] == [1, 2, None, None]
    assert [r["weight"] for r in rows] == [2.0, 3.0, 2.5, 5.0]
    assert rows[2]["weight_origin"] == "no score: the pool median 2.5" and rows[3]["weight_origin"] == "imported Deita annotation"
    assert [r["raw"] is not None for r in rows] == [True, True, False, False]
    path = write_inputs(tmp_path / "v0001.parquet", snapshot, {"shards": {}})
    with duckdb.connect() as con:
        assert read_inputs_row(con, path, "s1")["weight_origin"].startswith("quality_scores") and read_inputs_row(con, path, "s9") is None

    then = rows[2]
    assert input_changes(then, current.to_pylist()[2]) == {}  # unscored then and now
    rescored = current.to_pylist()[2] | {"weight": 4.0, "weight_origin": "quality_scores (judge:m judge-v1)"}
    change = input_changes(then, rescored, runs_now={"quality_scores": {"run_id": "r2"}})["quality"]
    assert (change["score_before"], change["score_after"], change["changed_by_run"]) == (None, 4.0, "r2")
    edited = current.to_pylist()[0] | {"raw": '{"id": "s1", "new": 1}', "line_no": 7}
    assert set(input_changes(rows[1], edited)) == {"raw_record"}
    assert input_changes(rows[1], None) == {"removed_from_pool": "shard a.jsonl no longer holds this sample"}


def test_snapshot_order_does_not_depend_on_the_order_rows_come_in(tmp_path):
    """Members by rank, then the others by sample_id, whether the rows come sorted (current_inputs,
    LineageRows) or in a query's order; written a batch of rows at a time, the file holds the same
    rows in the same order as the table; LineageRows' order by sample_id (a permutation, no sorted
    copy of the rows) gives the same file."""
    from mig_assets.core.selection.lineage import INPUTS_SCHEMA, LineageRows, snapshot_rows, version_inputs, write_inputs

    rng = np.random.default_rng(0)
    ids = [f"s{i:04d}" for i in range(500)]
    base = {name: None for name in INPUTS_SCHEMA.names}
    rows = [base | {"sample_id": sid, "shard": "a.jsonl", "tags": ["x"], "weight": float(i), "raw": sid} for i, sid in enumerate(ids)]
    in_order = pa.Table.from_pylist(rows, schema=INPUTS_SCHEMA)
    shuffled = in_order.take(pa.array(rng.permutation(len(ids))))
    selected = [ids[i] for i in rng.choice(len(ids), 40, replace=False)]
    expected = version_inputs(in_order, ids, np.arange(500.0), 0.0, selected)
    assert expected.column("sample_id").to_pylist() == selected + sorted(set(ids) - set(selected))
    assert version_inputs(shuffled, ids, np.arange(500.0), 0.0, selected).equals(expected)
    lineage = LineageRows(shuffled)
    lineage.sort_in_background()
    assert lineage.table is shuffled and shuffled.take(lineage.by_sample_id()).equals(in_order)
    table, order = snapshot_rows(lineage.table, ids, np.arange(500.0), 0.0, selected, by_sample_id=lineage.by_sample_id())
    path = write_inputs(tmp_path / "v0002.parquet", table, {"shards": {}}, order)
    written = pq.read_table(path)
    assert written.equals(expected.replace_schema_metadata(written.schema.metadata))
    # given where each pool sample and member is (as a selection knows from its load), no id is looked up
    where = {sid: row for row, sid in enumerate(shuffled.column("sample_id").to_pylist())}
    rows = (np.array([where[sid] for sid in ids]), np.array([where[sid] for sid in selected]))
    by_rows, by_rows_order = snapshot_rows(lineage.table, ids, np.arange(500.0), 0.0, selected, by_sample_id=lineage.by_sample_id(), rows=rows)
    assert by_rows.take(by_rows_order).cast(INPUTS_SCHEMA).equals(expected)
    from mig_assets.core.store.parquet import write_rows_atomic

    small_batches = pq.ParquetFile(write_rows_atomic(table, order, tmp_path / "batched.parquet", batch_rows=64, schema=INPUTS_SCHEMA))
    assert small_batches.num_row_groups == 8 and small_batches.read().equals(expected)
    nothing = pq.read_table(write_rows_atomic(table, pa.array([], pa.uint64()), tmp_path / "empty.parquet", batch_rows=64, schema=INPUTS_SCHEMA))
    assert nothing.num_rows == 0 and nothing.schema.equals(INPUTS_SCHEMA)
