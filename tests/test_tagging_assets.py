"""atomic_tags as a Dagster asset: statuses, the blocking failure-rate check, versions, and a real kill."""

import json
import os
import signal
import subprocess
import sys
import time

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest

from mig_assets.core.store.catalog import open_catalog
from mig_assets.core.store.layout import IMPORTED_MARKER
from mig_assets.core.tagging.canonical import TAG_POLICIES, TAG_RULES_VERSION
from mig_assets.core.tagging.prompts import PROMPTS
from mig_assets.core.tagging.rows import TAG_ROW_SCHEMA
from mig_assets.defs.tagging.assets import build_atomic_tags, tag_vocabulary
from tests.conftest import REAL_DATA, REPO_ROOT, materialize_shards
from tests.fakes import FakeTagger


def ingest_lines(layout, instance, resources, name, lines):
    path = layout.incoming_dir / name
    path.write_text("\n".join(lines) + "\n")
    materialize_shards(instance, resources, layout, [path])
    return layout.shard_key(path)


def test_llm_tags_with_statuses_metadata_and_cache(layout, instance, resources):
    lines = (REAL_DATA / "mt_bench_questions.jsonl").read_text().splitlines()[:6]
    shard = ingest_lines(layout, instance, resources, "mt.jsonl", lines)
    tagger = FakeTagger()
    asset = build_atomic_tags(tagger.version())
    run = dict(instance=instance, partition_key=shard, resources={**resources, "tagger": tagger})
    first = dg.materialize([asset], **run).asset_materializations_for_node("atomic_tags")[0].metadata
    second = dg.materialize([asset], **run).asset_materializations_for_node("atomic_tags")[0].metadata
    assert (first["newly_tagged"].value, first["from_cache"].value) == (6, 0)
    assert (second["newly_tagged"].value, second["from_cache"].value) == (0, 6)
    assert first["statuses"].value == {"ok": 6} and first["model"].value == "fake-model"
    rows = pq.read_table(layout.shard_file("atomic_tags", shard)).to_pylist()
    assert len(rows) == 6 and all(r["tags"] and r["backend"] == "vllm" and r["prompt_version"] == "atomic-v1" for r in rows)


def test_failure_rate_check_blocks_downstream(layout, instance, resources):
    shard = ingest_lines(layout, instance, resources, "q.jsonl", [json.dumps({"prompt": f"question {i}"}) for i in range(10)])
    tagger = FakeTagger(script_json=json.dumps({f"question {i}": ["not json"] for i in range(3)}))
    asset = build_atomic_tags(tagger.version())
    result = dg.materialize(
        [asset, tag_vocabulary],
        partition_key=shard,
        instance=instance,
        raise_on_error=False,
        resources={**resources, "tagger": tagger},
    )
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "tagging_failure_rate"]
    assert not check.passed and check.metadata["failure_rate"].value == 0.3
    assert {e["reason"] for e in check.metadata["examples"].value} == {"not JSON: 'not json'"}
    assert not result.success and result.asset_materializations_for_node("tag_vocabulary") == []
    failed = [r for r in pq.read_table(layout.shard_file("atomic_tags", shard)).to_pylist() if r["status"] == "failed"]
    assert len(failed) == 3 and all(r["tags"] == [] for r in failed)  # recorded, never given default tags


def smollm2_like_answer(i: int) -> str:
    """Answers like SmolLM2-135M's on the demo (issue 13): junk mixed with a real tag or two."""
    junk = [["the", "to"], ["lighthouse lighthouse"], ["debt relief debt relief debt relief debt"], ["json safe finally finally"], ["list1", "42"]]
    return json.dumps({"tags": [*junk[i % len(junk)], "Customer Service", f"topic {chr(97 + i)} planning"]})


def run_junk_shard(layout, instance, resources, name, answer, max_junk_share=0.3):
    shard = ingest_lines(layout, instance, resources, name, [json.dumps({"prompt": f"question {i}"}) for i in range(10)])
    tagger = FakeTagger(script_json=json.dumps({f"question {i}": [answer(i)] for i in range(10)}))
    asset = build_atomic_tags(tagger.version())
    return dg.materialize(
        [asset, tag_vocabulary],
        partition_key=shard,
        instance=instance,
        raise_on_error=False,
        resources={**resources, "tagger": tagger},
        run_config={"ops": {"atomic_tags": {"config": {"max_junk_share": max_junk_share}}}},
    ), shard


def test_junk_tags_are_filtered_counted_and_block_a_broken_tagger(layout, instance, resources):
    result, shard = run_junk_shard(layout, instance, resources, "junk.jsonl", smollm2_like_answer)
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "junk_tag_share"]
    # 14 junk surface tags of 34 (0.41 > 0.3): the check blocks tag_vocabulary
    assert not check.passed and (check.metadata["junk_tags"].value, check.metadata["surface_tags"].value) == (14, 34)
    assert check.metadata["examples"].value["repeated words"][0] == "lighthouse lighthouse"
    assert not result.success and result.asset_materializations_for_node("tag_vocabulary") == []
    rows = pq.read_table(layout.shard_file("atomic_tags", shard)).to_pylist()
    assert all(r["tag_policy"] == "normalized" and "customer service" in r["tags"] for r in rows)
    assert {d["surface"] for r in rows for d in r["dropped_tags"]} == {
        "the",
        "to",
        "lighthouse lighthouse",
        "debt relief debt relief debt relief debt",
        "json safe finally finally",
        "list1",
        "42",
    }
    assert sum(len(r["surface_tags"]) for r in rows) == sum(len(r["tags"]) + len(r["dropped_tags"]) for r in rows)  # nothing lost

    # above the threshold the pipeline goes on, and tag_vocabulary shows the policy and the drops
    result, _ = run_junk_shard(layout, instance, resources, "junk.jsonl", smollm2_like_answer, max_junk_share=0.5)
    assert result.success
    meta = result.asset_materializations_for_node("tag_vocabulary")[0].metadata
    assert meta["tag_policy"].value["vllm"].startswith("normalized: ") and meta["surface_occurrences_dropped"].value == 14
    assert "| repeated words | 6 |" in meta["dropped_by_reason"].value and "lighthouse" not in meta["top_tags"].value
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        vocabulary = {t for (t,) in con.execute("SELECT tag FROM tag_vocabulary").fetchall()}
        forms = dict(con.execute("SELECT surface, dropped_reason FROM tag_surface_forms").fetchall())
    assert "customer service" in vocabulary and not vocabulary & {"the", "to", "lighthouse lighthouse", "list1", "42"}
    assert forms["lighthouse lighthouse"] == "repeated words" and forms["Customer Service"] is None


def catalog_tag_rows(layout, shard: str) -> list[dict]:
    """The shard's rows of the catalog's ``atomic_tags`` (how every reader sees tags), by line."""
    with open_catalog(layout) as con:
        table = con.sql("SELECT t.* FROM atomic_tags t JOIN samples s USING (sample_id) WHERE t.shard = ? ORDER BY s.line_no", params=[shard]).to_arrow_table()
    assert table.schema.equals(TAG_ROW_SCHEMA)  # the same columns and types, whatever wrote the rows
    return table.to_pylist()


def test_imported_tags_keep_the_reference_semantics(layout, instance, resources):
    record = {
        "dialogs": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        "annotation": {"instag": {"content": ["C#", "news", "information", "news"]}},
    }
    shard = ingest_lines(layout, instance, resources, "mig.jsonl", [json.dumps(record)])
    asset = build_atomic_tags("imported")
    result = dg.materialize([asset, tag_vocabulary], partition_key=shard, instance=instance, resources=resources)
    [row] = catalog_tag_rows(layout, shard)
    assert row["tags"] == ["C#", "news", "information", "news"] and row["tag_policy"] == "as_written" and row["dropped_tags"] == []
    meta = result.asset_materializations_for_node("tag_vocabulary")[0].metadata
    assert meta["tag_policy"].value == {"imported": "as_written: " + TAG_POLICIES["as_written"]}
    assert meta["surface_occurrences_dropped"].value == 0


def test_imported_tags_are_read_in_place_and_one_backend_at_a_time_holds_a_shard(layout, instance, resources):
    """Imported tags are not copied: the shard keeps a marker and the catalog reads the kept raw_pool
    rows' annotations (a duplicate line is no tag row; a record without an annotation is
    ``no_annotation``). Tagging the shard with a model replaces them with its tag file, and importing
    again replaces that (its answers stay in the tag cache): never both, never neither."""
    annotated = {"prompt": "Explain recursion.", "response": "A function calling itself.", "annotation": {"instag": {"content": ["recursion", "Python"]}}}
    lines = [json.dumps(annotated), json.dumps({"prompt": "question 1"}), json.dumps(annotated)]  # line 3: a duplicate of line 1
    shard = ingest_lines(layout, instance, resources, "mixed.jsonl", lines)
    imported = build_atomic_tags("imported")
    meta = dg.materialize([imported], partition_key=shard, instance=instance, resources=resources).asset_materializations_for_node("atomic_tags")[0].metadata
    marker = layout.shard_file("atomic_tags", shard).with_name(IMPORTED_MARKER)
    assert marker.exists() and not layout.shard_file("atomic_tags", shard).exists()
    facts = json.loads(marker.read_text())
    assert (facts["samples"], facts["raw_pool_file"], facts["tag_policy"]) == (2, f"raw_pool/shard={shard}/part-0.parquet", "as_written")
    assert meta["path"].value == str(marker)
    assert meta["statuses"].value == {"ok": 1, "no_annotation": 1} and meta["dagster/row_count"].value == 2
    first, second = catalog_tag_rows(layout, shard)
    assert (first["tags"], first["surface_tags"], first["status"], first["reason"]) == (["recursion", "Python"], ["recursion", "Python"], "ok", "")
    assert (first["backend"], first["model"], first["prompt_version"], first["attempts"], first["truncated"]) == ("imported", "", "", 0, False)
    assert (second["tags"], second["status"], second["reason"]) == ([], "no_annotation", "the record carries no annotation.instag.content")

    tagger = FakeTagger()
    dg.materialize([build_atomic_tags(tagger.version())], partition_key=shard, instance=instance, resources={**resources, "tagger": tagger})
    assert layout.shard_file("atomic_tags", shard).exists() and not marker.exists()
    assert [r["backend"] for r in catalog_tag_rows(layout, shard)] == ["vllm", "vllm"]

    dg.materialize([imported], partition_key=shard, instance=instance, resources=resources)
    assert marker.exists() and not layout.shard_file("atomic_tags", shard).exists()
    assert [r["backend"] for r in catalog_tag_rows(layout, shard)] == ["imported", "imported"]


def test_a_tag_file_takes_precedence_over_a_marker_left_beside_it(layout, instance, resources):
    """Between writing one backend's tags and removing the other's (a crash there), the tag file is
    what the catalog reads: a shard's rows are never counted twice."""
    shard = ingest_lines(layout, instance, resources, "both.jsonl", [json.dumps({"prompt": f"question {i}"}) for i in range(3)])
    tagger = FakeTagger()
    dg.materialize([build_atomic_tags(tagger.version())], partition_key=shard, instance=instance, resources={**resources, "tagger": tagger})
    layout.shard_file("atomic_tags", shard).with_name(IMPORTED_MARKER).write_text("{}")
    assert [r["backend"] for r in catalog_tag_rows(layout, shard)] == ["vllm"] * 3


def test_changing_prompt_or_model_changes_the_code_version():
    base = FakeTagger()
    assert FakeTagger(prompt_version="instag-v1").version() != base.version()
    assert FakeTagger(model="other-model").version() != base.version()
    assert FakeTagger(max_tokens=200).version() != base.version()
    assert build_atomic_tags(base.version()).code_versions_by_key[dg.AssetKey("atomic_tags")] == f"tags-{base.version()}-rules{TAG_RULES_VERSION}"
    assert set(PROMPTS) == {"atomic-v1", "instag-v1"}


@pytest.mark.slow
def test_killed_mid_shard_rerun_tags_only_the_rest_without_duplicates(layout, instance, resources):
    lines = [json.dumps({"prompt": f"explain topic number {i}"}) for i in range(12)]
    shard = ingest_lines(layout, instance, resources, "slow.jsonl", lines)
    command = [sys.executable, "-m", "tests.fakes", str(layout.home), shard]
    process = subprocess.Popen(command + ["1.0", "2"], cwd=REPO_ROOT, start_new_session=True)
    cache_root = layout.warehouse_dir / "tag_cache"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cache_root.rglob("batch-*.parquet"))) < 2:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)  # a real kill, mid-shard
    process.wait()
    done_before = {r["text_hash"] for f in cache_root.rglob("batch-*.parquet") for r in pq.read_table(f).to_pylist()}
    assert 2 <= len(done_before) < 12
    assert not layout.shard_file("atomic_tags", shard).exists()

    subprocess.run(command + ["0", "2"], cwd=REPO_ROOT, check=True, timeout=300)
    batches = [pq.read_table(f).column("text_hash").to_pylist() for f in cache_root.rglob("batch-*.parquet")]
    all_ids = [i for batch in batches for i in batch]
    assert len(all_ids) == len(set(all_ids)) == 12  # every sample tagged exactly once
    assert pq.read_table(layout.shard_file("atomic_tags", shard)).num_rows == 12
