"""raw_pool through real Dagster materializations on an ephemeral instance, on the real data."""

import json
import shutil

import dagster as dg
import duckdb
import pytest

from tests.conftest import REAL_DATA, materialize_shards

EXPECTED_FORMATS = {
    "alpaca_eval_outputs.json": "alpaca",
    "alpaca_eval_outputs_Qwen1.5-7B-Chat.json": "alpaca",
    "alpaca_eval_outputs_gpt4_1106_preview.json": "alpaca",
    "alpaca_eval_outputs_llama-2-7b-chat-hf.json": "alpaca",
    "arena_hard_v0.1_questions.jsonl": "prompt",
    "arena_hard_v2.0_questions.jsonl": "prompt",
    "mt_bench_questions.jsonl": "turns",
    "self_instruct_seed_tasks.jsonl": "alpaca",
    "self_instruct_user_oriented.jsonl": "alpaca",
    "xsample_example.jsonl": "mig",
}


def count_records(path) -> int:
    """Independent count: array length for .json, non-blank lines for .jsonl."""
    if path.suffix == ".json":
        return len(json.loads(path.read_text()))
    return sum(1 for line in path.read_bytes().split(b"\n") if line.strip())


def test_every_real_file_ingests_in_its_native_format(layout, instance, resources):
    paths = []
    for name in sorted(EXPECTED_FORMATS):
        paths.append(layout.incoming_dir / name)
        shutil.copyfile(REAL_DATA / name, paths[-1])
    results = materialize_shards(instance, resources, layout, paths)
    total_kept = 0
    for path in paths:
        outcome = results[layout.shard_key(path)]
        meta = outcome["metadata"]
        assert meta["rows_read"] == count_records(path), path.name
        assert meta["rows_read"] == meta["rows_kept"] + meta["rows_quarantined"] + meta["duplicates"]
        assert meta["rows_quarantined"] == (1 if path.name == "xsample_example.jsonl" else 0), path.name
        assert set(meta["formats"]) == {EXPECTED_FORMATS[path.name]}
        assert meta["dagster/row_count"] == meta["rows_kept"]
        assert "| line | format |" in meta["preview"]
        assert outcome["checks"]["rows_accounted"].passed and outcome["checks"]["sample_ids_unique"].passed
        total_kept += meta["rows_kept"]
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT sample_id) FROM samples").fetchone() == (total_kept, total_kept)
        mt = con.execute("SELECT messages FROM samples WHERE source_file = 'incoming/mt_bench_questions.jsonl' AND original_id = '81'").fetchone()[0]
        assert [m["role"] for m in mt] == ["user", "user"]


def test_materialization_metadata_schema_and_data_version(layout, instance, resources):
    path = layout.incoming_dir / "mt.jsonl"
    shutil.copyfile(REAL_DATA / "mt_bench_questions.jsonl", path)
    first = materialize_shards(instance, resources, layout, [path])["mt.jsonl"]["result"]
    second = materialize_shards(instance, resources, layout, [path])["mt.jsonl"]["result"]
    versions = [r.asset_materializations_for_node("raw_pool")[0].tags["dagster/data_version"] for r in (first, second)]
    assert versions[0] == versions[1]  # same bytes, same code: same data version
    path.write_text(path.read_text().splitlines()[0] + "\n")
    third = materialize_shards(instance, resources, layout, [path])["mt.jsonl"]["result"]
    assert third.asset_materializations_for_node("raw_pool")[0].tags["dagster/data_version"] != versions[0]
    from mig_assets.definitions import defs

    spec = defs.resolve_assets_def("raw_pool").specs_by_key[dg.AssetKey("raw_pool")]
    columns = {c.name for c in spec.metadata["dagster/column_schema"].columns}
    assert {"sample_id", "messages", "raw", "duplicate_of", "imported_tags"} <= columns


def test_quarantine_rate_check_warns_on_a_mostly_bad_shard(layout, instance, resources):
    path = layout.incoming_dir / "bad.jsonl"
    path.write_text('{"nope": 1}\n{"instruction": "fine"}\n')
    outcome = materialize_shards(instance, resources, layout, [path])["bad.jsonl"]
    check = outcome["checks"]["quarantine_rate"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert outcome["checks"]["rows_accounted"].passed


def test_source_format_override_through_run_config(layout, instance, resources):
    path = layout.incoming_dir / "prompts.jsonl"
    path.write_text('{"prompt": "p", "instruction": "i"}\n')
    config = {"ops": {"raw_pool": {"config": {"source_format": "prompt"}}}}
    meta = materialize_shards(instance, resources, layout, [path], run_config=config)["prompts.jsonl"]["metadata"]
    assert meta["formats"] == {"prompt": 1}


def test_unknown_partition_fails_clearly(layout, instance, resources):
    from mig_assets.defs.pool.assets import raw_pool

    instance.add_dynamic_partitions("pool_shards", ["ghost.jsonl"])
    with pytest.raises(Exception, match="no file under .* has shard key 'ghost.jsonl'"):
        dg.materialize([raw_pool], partition_key="ghost.jsonl", instance=instance, resources=resources)
