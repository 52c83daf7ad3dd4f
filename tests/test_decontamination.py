"""Decontamination as Dagster assets and in the CLI: planted benchmark copies are found in real
materializations (exact, noisy, embedded in a longer prompt, paraphrased by the embedding method),
the check is incremental (a new shard alone; a benchmark change re-checks all), and every selection
leaves flagged samples and non-representative near-duplicates out by default, says why in explain,
and records the benchmark files in its manifest."""

import json
import os
import subprocess
import sys

import dagster as dg
import pyarrow as pa
import pytest

from mig_assets.core.curation.shard_check import read_provenance
from mig_assets.core.ingest.records import sample_id
from mig_assets.core.outputs.explain import explain
from mig_assets.core.selection.specs import SelectionSpec
from mig_assets.core.store.catalog import open_catalog
from mig_assets.core.store.parquet import write_parquet_atomic
from mig_assets.defs.contamination.assets import build_contamination, decontamination_config
from mig_assets.defs.selection.assets import build_selection_asset
from mig_assets.settings import load_settings, write_settings_file
from tests.conftest import REAL_DATA, REPO_ROOT, materialize_shards

MT_BENCH = REAL_DATA / "mt_bench_questions.jsonl"
ARENA_V2 = REAL_DATA / "arena_hard_v2.0_questions.jsonl"


def mt_bench_turn(line: int) -> str:
    return json.loads(MT_BENCH.read_text().splitlines()[line - 1])["turns"][0]


CLEAN = [
    "Write a short poem about the sea and the wind.",
    "Explain how a bicycle gear works to a ten year old.",
    "Give me a list of the top 10 things to do in Paris.",  # shares common phrases with many prompts
    "Compose an email to my landlord about a broken heater.",
]


def planted_records() -> list[dict]:
    q1, q2, q3 = mt_bench_turn(1), mt_bench_turn(11), mt_bench_turn(21)
    return [
        {"prompt": q1, "response": "copy"},
        {"prompt": "  " + q2.upper().replace(" ", "   ").replace(",", "").replace(".", "!!") + " ", "response": "noisy copy"},
        {"prompt": "Hi! I need help with my homework. " + q3 + " Please answer in detail, thanks a lot.", "response": "inside"},
        *({"prompt": text, "response": "fine"} for text in CLEAN),
    ]


def ingest(layout, instance, resources, name: str, records: list[dict]) -> str:
    path = layout.incoming_dir / name
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    materialize_shards(instance, resources, layout, [path])
    return layout.shard_key(path)


def contamination_asset(layout, **updates):
    write_settings_file(layout.home, {f"decontamination.{k}": v for k, v in updates.items()})
    return build_contamination(decontamination_config(load_settings(layout.home)))


def check(asset, instance, resources, shard):
    result = dg.materialize([asset], partition_key=shard, instance=instance, resources=resources)
    assert result.success
    return {k: v.value for k, v in result.asset_materializations_for_node("contamination")[0].metadata.items()}


def flagged(layout) -> dict[str, set[tuple]]:
    with open_catalog(layout) as con:
        rows = con.execute("SELECT sample_id, benchmark_file, benchmark_line, method FROM contamination").fetchall()
    found: dict[str, set[tuple]] = {}
    for sid, file, line, method in rows:
        found.setdefault(sid, set()).add((os.path.basename(file), line, method))
    return found


def prompt_id(text: str, response: str) -> str:
    return sample_id([("user", text), ("assistant", response)])


def test_planted_contamination_is_found_and_clean_samples_are_not(layout, instance, resources):
    shard = ingest(layout, instance, resources, "pool.jsonl", planted_records())
    metadata = check(contamination_asset(layout, benchmarks=[str(MT_BENCH), str(ARENA_V2)]), instance, resources, shard)
    records = planted_records()
    found = flagged(layout)
    assert found == {
        prompt_id(records[0]["prompt"], "copy"): {("mt_bench_questions.jsonl", 1, "exact"), ("mt_bench_questions.jsonl", 1, "ngram")},
        prompt_id(records[1]["prompt"], "noisy copy"): {("mt_bench_questions.jsonl", 11, "exact"), ("mt_bench_questions.jsonl", 11, "ngram")},
        prompt_id(records[2]["prompt"], "inside"): {("mt_bench_questions.jsonl", 21, "ngram")},
    }
    assert (metadata["samples_checked"], metadata["samples_flagged"], metadata["benchmark_items"]) == (7, 3, 830)
    assert (
        build_contamination(decontamination_config(load_settings(layout.home))).automation_conditions_by_key[dg.AssetKey("contamination")] is not None
    )  # new shards: checked
    assert (
        build_contamination(decontamination_config(load_settings(layout.home / "elsewhere"))).automation_conditions_by_key.get(dg.AssetKey("contamination"))
        is None
    )  # no benchmark
    assert metadata["flagged_per_benchmark"] == {str(MT_BENCH): 3, str(ARENA_V2): 0}
    with open_catalog(layout) as con:
        scores = dict(con.execute("SELECT sample_id, score FROM contamination WHERE method = 'ngram'").fetchall())
    assert 0.5 < scores[prompt_id(records[2]["prompt"], "inside")] <= 1.0  # MT-Bench's two turns: the first one covered
    config, checked = read_provenance(layout.shard_file("contamination", shard))
    assert checked == 7 and config["benchmarks"][0]["sha256"] and config["ngram"] == 8 and config["threshold"] == 0.5


def test_paraphrase_is_found_by_the_embedding_method_only(layout, instance, resources):
    from mig_assets.defs.embeddings.assets import sample_embeddings

    question = "What are the main causes of climate change, and what can individuals do to reduce their carbon footprint?"
    paraphrase = "What mainly causes climate change, and how can each of us shrink our personal carbon footprint?"  # cosine 0.90
    bench = layout.home / "bench.jsonl"
    bench.write_text(json.dumps({"prompt": question}) + "\n" + json.dumps({"prompt": "Write a limerick about a cat who loves cheese."}) + "\n")
    records = [{"prompt": paraphrase, "response": "x"}, *({"prompt": t, "response": "y"} for t in CLEAN)]
    shard = ingest(layout, instance, resources, "para.jsonl", records)
    assert dg.materialize([sample_embeddings], partition_key=shard, instance=instance, resources=resources).success
    text_only = contamination_asset(layout, benchmarks=[str(bench)])
    check(text_only, instance, resources, shard)
    assert flagged(layout) == {}  # no shared 8-gram, not equal: the text methods cannot see a paraphrase
    asset = contamination_asset(layout, methods=["ngram", "exact", "embedding"])  # the default cosine threshold, 0.85
    assert asset.code_versions_by_key[asset.key] != text_only.code_versions_by_key[text_only.key]
    assert {dg.AssetKey("raw_pool"), dg.AssetKey("sample_embeddings")} <= set(asset.asset_deps[asset.key])
    check(asset, instance, resources, shard)
    assert flagged(layout) == {prompt_id(paraphrase, "x"): {("bench.jsonl", 1, "embedding")}}


def run_cli(args, home, timeout=600):
    env = {**os.environ, "MIG_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    return subprocess.run([sys.executable, "-m", "mig_assets.cli", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_decontaminates_incrementally_and_rechecks_all_when_the_benchmarks_change(tmp_path):
    home = tmp_path / "home"
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("\n".join(json.dumps(r) for r in planted_records()) + "\n")
    second.write_text(json.dumps({"prompt": mt_bench_turn(31), "response": "late copy"}) + "\n" + json.dumps({"prompt": CLEAN[0], "response": "z"}) + "\n")
    assert run_cli(["ingest", str(first)], home).returncode == 0

    done = run_cli(["decontaminate", "--against", str(MT_BENCH)], home)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["samples_checked"], summary["samples_flagged"], summary["flagged_per_benchmark"]) == (7, 3, {str(MT_BENCH): 3})
    assert summary["shards_checked_now"] == 1
    assert str(MT_BENCH) in (home / "mig.yaml").read_text()

    assert run_cli(["ingest", str(second)], home).returncode == 0
    grown = json.loads(run_cli(["decontaminate", "--against", str(MT_BENCH)], home).stdout)
    assert grown["shards_checked_now"] == 1  # the new shard alone
    assert (grown["samples_checked"], grown["samples_flagged"]) == (9, 4)

    changed = run_cli(["decontaminate", "--against", str(MT_BENCH), str(ARENA_V2), "--ngram", "13", "--threshold", "0.6"], home)
    assert changed.returncode == 0, changed.stderr
    rechecked = json.loads(changed.stdout)
    assert rechecked["shards_checked_now"] == 2  # new benchmark set and thresholds: every shard again
    assert rechecked["flagged_per_benchmark"] == {str(MT_BENCH): 4, str(ARENA_V2): 0}
    assert "ngram: 13" in (home / "mig.yaml").read_text() and "threshold: 0.6" in (home / "mig.yaml").read_text()

    missing = run_cli(["decontaminate", "--against", str(tmp_path / "nope.jsonl")], home)
    assert missing.returncode == 2 and "nope.jsonl: benchmark file not found" in missing.stderr


def write_near_duplicates(layout, rows: list[dict]) -> None:
    """The near_duplicates view (part B's asset) as a table folder: the catalog exposes it under that name."""
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [("sample_id", pa.string()), ("cluster_id", pa.int64()), ("representative_id", pa.string()), ("method", pa.string()), ("similarity", pa.float64())]
        ),
    )
    write_parquet_atomic(table, layout.tables_dir / "near_duplicates" / "part-0.parquet")


def select_all(instance, resources, spec_params=None, name="everything", run_config=None):
    spec = SelectionSpec(name, method="random", budget={"fraction": 1.0}, params=spec_params or {})
    run_config = {"ops": {name: {"config": run_config}}} if run_config else None
    result = dg.materialize([build_selection_asset(spec)], instance=instance, resources=resources, run_config=run_config)
    assert result.success
    return {k: v.value for k, v in result.asset_materializations_for_node(name)[0].metadata.items()}


def test_selections_exclude_contaminated_and_duplicate_samples_unless_switched_off(layout, instance, resources):
    records = planted_records()
    shard = ingest(layout, instance, resources, "pool.jsonl", records)
    check(contamination_asset(layout, benchmarks=[str(MT_BENCH)]), instance, resources, shard)
    ids = [prompt_id(r["prompt"], r["response"]) for r in records]
    contaminated, clean = ids[:3], ids[3:]
    write_near_duplicates(
        layout,
        [
            {"sample_id": clean[0], "cluster_id": 1, "representative_id": clean[0], "method": "minhash", "similarity": 1.0},
            {"sample_id": clean[1], "cluster_id": 1, "representative_id": clean[0], "method": "minhash", "similarity": 0.93},
        ],
    )
    metadata = select_all(instance, resources)
    assert (metadata["excluded_contaminated"], metadata["excluded_near_duplicates"], metadata["dagster/row_count"]) == (3, 1, 3)
    assert metadata["excluded_per_benchmark"] == {str(MT_BENCH): 3}
    export = layout.exports_dir / "everything" / "v0001"
    members = {json.loads(line)["sample_id"] for line in (export / "data.jsonl").read_text().splitlines()}
    assert members == {clean[0], clean[2], clean[3]}
    manifest = json.loads((export / "manifest.json").read_text())
    curation = manifest["curation"]
    assert curation["exclude_contaminated"] and curation["exclude_near_duplicates"]
    [config] = curation["decontamination"]
    assert config["benchmarks"] == [{"file": str(MT_BENCH), "sha256": config["benchmarks"][0]["sha256"]}]
    assert len(config["benchmarks"][0]["sha256"]) == 64 and config["methods"] == ["ngram", "exact"] and config["ngram"] == 8
    assert manifest["counts"]["excluded_contaminated"] == 3 and "excluded before selection" in (export / "report.html").read_text()

    with open_catalog(layout) as con:
        why = explain(con, contaminated[2], "everything")["selection"]["why_not"]
        assert "excluded before selection: contaminated" in why and "mt_bench_questions.jsonl line 21" in why and "ngram" in why
        dup = explain(con, clean[1], "everything")["selection"]["why_not"]
        assert f"near duplicate of representative {clean[0]}" in dup and "similarity 0.930" in dup
        assert explain(con, clean[0], "everything")["selection"]["selected"]

    kept = select_all(instance, resources, {"exclude_contaminated": False, "exclude_near_duplicates": False}, name="uncurated")
    assert (kept["excluded_contaminated"], kept["excluded_near_duplicates"], kept["dagster/row_count"]) == (0, 0, 7)
    only_dups = select_all(instance, resources, {"exclude_contaminated": False}, name="dedup_only")
    assert (only_dups["excluded_contaminated"], only_dups["excluded_near_duplicates"], only_dups["dagster/row_count"]) == (0, 1, 6)


@pytest.mark.slow
@pytest.mark.ray
def test_contamination_on_ray_equals_local(layout, instance, resources):
    """The per-shard n-gram hashing as Ray tasks on a local cluster: the same rows, byte for byte."""
    pytest.importorskip("ray")
    from mig_assets.resources import Execution

    shards = [ingest(layout, instance, resources, f"part{i}.jsonl", planted_records()[i::2]) for i in range(2)]
    asset = contamination_asset(layout, benchmarks=[str(MT_BENCH), str(ARENA_V2)])
    local = {}
    for shard in shards:
        check(asset, instance, resources, shard)
        local[shard] = layout.shard_file("contamination", shard).read_bytes()
    on_ray = {**resources, "execution": Execution(mode="ray", num_cpus=2, object_store_mb=256)}
    result = dg.materialize(
        [asset], instance=instance, resources=on_ray, tags={"dagster/asset_partition_range_start": shards[0], "dagster/asset_partition_range_end": shards[1]}
    )
    assert result.success
    metadata = result.asset_materializations_for_node("contamination")[0].metadata
    assert metadata["execution"].value == "ray" and metadata["shards_in_run"].value == 2
    assert {shard: layout.shard_file("contamination", shard).read_bytes() for shard in shards} == local
    assert len(flagged(layout)) == 3


def test_a_version_that_starts_excluding_says_why_members_left(layout, instance, resources):
    records = planted_records()
    shard = ingest(layout, instance, resources, "pool.jsonl", records)
    check(contamination_asset(layout, benchmarks=[str(MT_BENCH)]), instance, resources, shard)
    off = {"exclude_contaminated": False, "exclude_near_duplicates": False}
    assert select_all(instance, resources, off, name="switched")["dagster/row_count"] == 7
    on = select_all(instance, resources, off, name="switched", run_config={"exclude_contaminated": True})  # the switch, at launch
    assert (on["version"], on["dagster/row_count"], on["removed"]) == (2, 4, 3)
    with open_catalog(layout) as con:
        reasons = [r for (r,) in con.execute("SELECT reason FROM selection_diffs WHERE selection = 'switched' AND change = 'removed'").fetchall()]
    assert len(reasons) == 3 and all(r.startswith("excluded before selection: contaminated: overlaps benchmark item mt_bench_questions.jsonl") for r in reasons)


def test_the_comparison_excludes_too(layout, instance, resources):
    from mig_assets.defs.selection.comparison import selection_comparison

    shard = ingest(layout, instance, resources, "pool.jsonl", planted_records())
    check(contamination_asset(layout, benchmarks=[str(MT_BENCH)]), instance, resources, shard)
    result = dg.materialize(
        [selection_comparison], instance=instance, resources=resources, run_config={"ops": {"selection_comparison": {"config": {"budget_fraction": 1.0}}}}
    )
    metadata = result.asset_materializations_for_node("selection_comparison")[0].metadata
    assert (metadata["pool_size"].value, metadata["excluded_contaminated"].value) == (4, 3)
    document = json.loads((layout.exports_dir / "comparison" / "v0001" / "comparison.json").read_text())
    assert document["curation"]["excluded_per_benchmark"] == {str(MT_BENCH): 3}


def test_automation_checks_a_new_shard_alone(layout, instance, resources):
    from mig_assets.defs.pool.assets import raw_pool

    asset = contamination_asset(layout, benchmarks=[str(MT_BENCH)])
    defs = dg.Definitions(assets=[raw_pool, asset], resources=resources)
    old = ingest(layout, instance, resources, "old.jsonl", planted_records()[:4])
    check(asset, instance, resources, old)
    cursor = dg.evaluate_automation_conditions(defs=defs, instance=instance).cursor
    new = ingest(layout, instance, resources, "new.jsonl", planted_records()[4:])
    evaluation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    assert evaluation.get_requested_partitions(dg.AssetKey("contamination")) == {new}
