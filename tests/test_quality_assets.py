"""quality_scores as a Dagster asset: the imported backend on real Deita annotations, a fake LLM
backend (cache, versions, data versions), and the blocking degenerate-score check."""

import json

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mig_assets.core.quality.rows import QUALITY_ROW_SCHEMA
from mig_assets.core.store.catalog import open_catalog
from mig_assets.core.store.layout import IMPORTED_MARKER
from mig_assets.core.store.parquet import read_kept_rows
from mig_assets.defs.quality.assets import build_quality_scores
from mig_assets.resources import Scorer
from tests.conftest import REAL_DATA, materialize_shards
from tests.fakes_quality import FakeScorer


def ingest(layout, instance, resources, name, lines):
    path = layout.incoming_dir / name
    path.write_text("\n".join(lines) + "\n")
    materialize_shards(instance, resources, layout, [path])
    return layout.shard_key(path)


def alpaca_lines(n: int) -> list[str]:
    records = json.loads((REAL_DATA / "alpaca_eval_outputs.json").read_text())[:n]
    return [json.dumps({"instruction": r["instruction"], "output": r["output"]}) for r in records]


def materialize(assets, shard, instance, resources, scorer, **kwargs):
    return dg.materialize(assets, partition_key=shard, instance=instance, resources={**resources, "scorer": scorer}, **kwargs)


def catalog_rows(layout, shard: str) -> pa.Table:
    """The shard's rows of the catalog's ``quality_scores`` (how every reader sees scores, imported
    ones read in place), by line."""
    with open_catalog(layout) as con:
        table = con.sql(
            "SELECT q.* FROM quality_scores q JOIN samples s USING (sample_id) WHERE q.shard = ? ORDER BY s.line_no", params=[shard]
        ).to_arrow_table()
    assert table.schema.equals(QUALITY_ROW_SCHEMA)  # the same columns and types, whatever made the rows
    return table


def check_of(result):
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "quality_scores_not_degenerate"]
    return check


def test_imported_backend_reads_the_pools_deita_scores(layout, instance, resources):
    path = layout.incoming_dir / "xsample_example.jsonl"
    path.write_bytes((REAL_DATA / "xsample_example.jsonl").read_bytes())
    materialize_shards(instance, resources, layout, [path])
    scorer = Scorer()  # backend imported
    result = materialize([build_quality_scores(scorer.version())], "xsample_example.jsonl", instance, resources, scorer)
    assert result.success and check_of(result).passed
    metadata = result.asset_materializations_for_node("quality_scores")[0].metadata
    assert metadata["statuses"].value == {"ok": 9} and metadata["backend"].value == "imported"
    assert "9 distinct values over 9 samples" in metadata["score_histogram"].value
    assert layout.shard_file("quality_scores", "xsample_example.jsonl").with_name(IMPORTED_MARKER).exists()  # not copied
    rows = catalog_rows(layout, "xsample_example.jsonl").to_pylist()
    assert len(rows) == 9 and all(r["backend"] == "imported" and r["n_turns"] == len(r["quality"]) for r in rows)
    pool = {r["sample_id"]: r for r in pq.read_table(layout.shard_file("raw_pool", "xsample_example.jsonl")).to_pylist()}
    for row in rows:
        assert row["score"] == pool[row["sample_id"]]["imported_quality"]
        deita = json.loads(pool[row["sample_id"]]["raw"])["annotation"]["deita"]
        assert row["quality"] == deita["quality_scores"] and row["score"] == pytest.approx(
            sum(q * c for q, c in zip(row["quality"], row["complexity"])) / len(row["quality"])
        )
    with resources["warehouse"].connect() as con:  # the catalog view, once the catalog is refreshed
        assert "quality_scores" in layout.refresh_catalog(con)
        assert con.execute("SELECT count(*), count(score) FROM quality_scores WHERE status = 'ok'").fetchone() == (9, 9)


def test_imported_backend_without_annotations_is_not_a_failure(layout, instance, resources):
    shard = ingest(layout, instance, resources, "mt.jsonl", (REAL_DATA / "mt_bench_questions.jsonl").read_text().splitlines()[:4])
    scorer = Scorer()
    result = materialize([build_quality_scores(scorer.version())], shard, instance, resources, scorer)
    assert check_of(result).passed
    rows = catalog_rows(layout, shard).to_pylist()
    assert {(r["status"], r["score"], r["reason"]) for r in rows} == {("no_annotation", None, "the record carries no annotation.deita")}


def test_fake_llm_scores_with_cache_metadata_and_versions(layout, instance, resources):
    shard = ingest(layout, instance, resources, "alpaca.jsonl", alpaca_lines(8) + [json.dumps({"prompt": "no answer here"})])
    scorer = FakeScorer()
    asset = build_quality_scores(scorer.version())
    first = materialize([asset], shard, instance, resources, scorer)
    second = materialize([asset], shard, instance, resources, scorer)
    m1 = first.asset_materializations_for_node("quality_scores")[0]
    m2 = second.asset_materializations_for_node("quality_scores")[0]
    assert (m1.metadata["newly_scored_calls"].value, m1.metadata["calls_from_cache"].value) == (16, 0)
    assert (m2.metadata["newly_scored_calls"].value, m2.metadata["calls_from_cache"].value) == (0, 16)
    assert m1.metadata["statuses"].value == {"ok": 8, "no_response": 1}
    assert m1.metadata["digit_token_ids"].value == {d: 1000 + ord(d) for d in "123456"}
    assert m1.metadata["samples_per_second"].value > 0 and m1.metadata["model"].value == "fake-scorer"
    assert m1.metadata["prompt_version"].value.startswith("deita-v1 (")
    assert "| score | samples |" in m1.metadata["score_histogram"].value
    assert m1.tags["dagster/data_version"] == m2.tags["dagster/data_version"]  # same scores, same data version
    assert check_of(first).passed
    rows = pq.read_table(layout.shard_file("quality_scores", shard)).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 8 and all(1 <= r["score"] <= 36 and r["model"] == "fake-scorer" for r in ok)
    assert all(r["backend"] == "logprob" and r["prompt_version"] == "deita-v1" for r in rows)

    code_version = asset.code_versions_by_key[dg.AssetKey("quality_scores")]
    assert code_version == f"quality-{scorer.version()}"
    assert FakeScorer(prompt_version="deita-chat-v1").version() != scorer.version()
    assert FakeScorer(model="other").version() != scorer.version()
    assert FakeScorer(max_query_tokens=100).version() != scorer.version()
    assert Scorer().version() == "imported"
    with pytest.raises(ValueError, match="for the judge backend"):
        FakeScorer(prompt_version="judge-v1").prompt


def test_judge_backend_through_the_asset(layout, instance, resources):
    shard = ingest(layout, instance, resources, "judge.jsonl", alpaca_lines(6))
    scorer = FakeScorer(backend="judge")
    result = materialize([build_quality_scores(scorer.version())], shard, instance, resources, scorer)
    assert check_of(result).passed
    rows = pq.read_table(layout.shard_file("quality_scores", shard)).to_pylist()
    assert all(r["status"] == "ok" and r["prompt_version"] == "judge-v1" and r["score"] == r["complexity"][0] * r["quality"][0] for r in rows)


@pytest.fixture
def downstream():
    @dg.asset(deps=["quality_scores"], partitions_def=build_quality_scores("x").partitions_def, backfill_policy=dg.BackfillPolicy.single_run())
    def uses_scores() -> None:
        return None

    return uses_scores


def test_degenerate_scores_fail_the_blocking_check(layout, instance, resources, downstream):
    shard = ingest(layout, instance, resources, "flat.jsonl", alpaca_lines(6))
    scorer = FakeScorer(constant=True)  # uniform digit probabilities: every score 3.5 x 3.5
    result = materialize([build_quality_scores(scorer.version()), downstream], shard, instance, resources, scorer, raise_on_error=False)
    check = check_of(result)
    assert not check.passed and check.metadata["verdict"].value == f"{shard}: all 6 scores equal 12.25"
    assert not result.success and result.asset_materializations_for_node("uses_scores") == []


def test_failure_rate_fails_the_check_and_failures_keep_no_score(layout, instance, resources, downstream):
    records = [json.dumps({"instruction": f"question {i}", "output": f"answer {i} " * (i + 1)}) for i in range(10)]
    shard = ingest(layout, instance, resources, "failing.jsonl", records)
    scorer = FakeScorer(script_json=json.dumps({"answer 1 ": "error", "answer 4 ": "no_digits", "answer 7 ": "error"}))
    result = materialize([build_quality_scores(scorer.version()), downstream], shard, instance, resources, scorer, raise_on_error=False)
    check = check_of(result)
    assert not check.passed and check.metadata["failure_rate"].value == 0.3
    assert "failure rate 30.0% (3/10)" in check.metadata["verdict"].value
    assert not result.success and result.asset_materializations_for_node("uses_scores") == []
    metadata = result.asset_materializations_for_node("quality_scores")[0].metadata
    assert metadata["failure_reasons"].value == {
        "turn 1 quality: backend error": 2,
        "turn 1 quality: no digit 1..6 among the first position's log-probabilities": 1,
    }
    rows = pq.read_table(layout.shard_file("quality_scores", shard)).to_pylist()
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 3 and all(r["score"] is None and r["reason"] for r in failed)  # never a default
    # a looser threshold lets the same scores through
    relaxed = materialize(
        [build_quality_scores(scorer.version())],
        shard,
        instance,
        resources,
        scorer,
        run_config={"ops": {"quality_scores": {"config": {"max_failure_rate": 0.5}}}},
    )
    assert check_of(relaxed).passed


def test_range_run_scores_every_shard_once(layout, instance, resources):
    shards = [ingest(layout, instance, resources, f"part{i}.jsonl", alpaca_lines(6)[3 * i : 3 * i + 3]) for i in range(2)]
    scorer = FakeScorer()
    result = dg.materialize(
        [build_quality_scores(scorer.version())],
        instance=instance,
        resources={**resources, "scorer": scorer},
        tags={"dagster/asset_partition_range_start": shards[0], "dagster/asset_partition_range_end": shards[1]},
    )
    assert result.success and check_of(result).passed
    assert sorted(m.partition for m in result.asset_materializations_for_node("quality_scores")) == sorted(shards)
    assert all(pq.read_table(layout.shard_file("quality_scores", s)).num_rows == 3 for s in shards)


def test_scorer_from_settings_overrides(tmp_path):
    from mig_assets.resources import build_resources
    from mig_assets.settings import load_settings

    assert build_resources(load_settings(tmp_path, environ={}))["scorer"].backend == "imported"
    environ = {
        "MIG_SCORER_BACKEND": "logprob",
        "MIG_SCORER_ENGINE": "openai",
        "MIG_SCORER_BASE_URL": "http://127.0.0.1:8000/v1",
        "MIG_SCORER_PROMPT": "deita-chat-v1",
    }
    scorer = build_resources(load_settings(tmp_path, environ=environ))["scorer"]
    assert (scorer.backend, scorer.engine, scorer.base_url, scorer.prompt.version) == (
        "logprob",
        "openai",
        "http://127.0.0.1:8000/v1",
        "deita-chat-v1",
    )
    assert scorer.version() != FakeScorer().version()


def test_imported_range_run_in_threads_writes_what_one_shard_runs_write(layout, instance, resources):
    """An imported range run does two shards at a time: each shard's rows and the run's data
    version are those of one run per shard."""
    lines = (REAL_DATA / "xsample_example.jsonl").read_text().splitlines()
    shards = [ingest(layout, instance, resources, f"x{i}.jsonl", lines[3 * i : 3 * i + 3]) for i in range(3)]
    scorer = Scorer()  # backend imported
    range_tags = {"dagster/asset_partition_range_start": shards[0], "dagster/asset_partition_range_end": shards[-1]}
    result = dg.materialize([build_quality_scores(scorer.version())], instance=instance, resources={**resources, "scorer": scorer}, tags=range_tags)
    assert result.success and sorted(m.partition for m in result.asset_materializations_for_node("quality_scores")) == sorted(shards)
    in_range = {s: catalog_rows(layout, s) for s in shards}
    kept = {s: read_kept_rows(layout.shard_file("raw_pool", s), ["sample_id"]).num_rows for s in shards}
    assert {s: table.num_rows for s, table in in_range.items()} == kept  # each kept sample scored once
    assert all(set(table.column("shard").to_pylist()) == {s} for s, table in in_range.items())
    for shard in shards:
        single = materialize([build_quality_scores(scorer.version())], shard, instance, resources, scorer)
        assert catalog_rows(layout, shard).equals(in_range[shard])
        assert single.asset_materializations_for_node("quality_scores")[0].metadata["statuses"].value == {"ok": in_range[shard].num_rows}


def test_imported_scores_read_the_per_turn_lists_ingestion_kept_and_older_shards_from_raw(layout, instance, resources):
    """Ingestion keeps annotation.deita's per-turn lists in columns, so imported scores are read in
    place from them; a shard ingested before it did (no such columns) gets a file of the same rows,
    read out of its raw records."""
    import pyarrow.parquet as pq

    path = layout.incoming_dir / "xsample_example.jsonl"
    path.write_bytes((REAL_DATA / "xsample_example.jsonl").read_bytes())
    materialize_shards(instance, resources, layout, [path])
    shard, scorer = "xsample_example.jsonl", Scorer()
    samples = layout.shard_file("raw_pool", shard)
    kept = pq.read_table(samples)
    for row in kept.to_pylist():
        deita = json.loads(row["raw"])["annotation"]["deita"]
        assert row["imported_quality_turns"] == deita["quality_scores"]
        assert row["imported_complexity_turns"] == deita["complexity_scores"][: len(deita["quality_scores"])]
    assert materialize([build_quality_scores(scorer.version())], shard, instance, resources, scorer).success
    from_columns = catalog_rows(layout, shard)
    pq.write_table(kept.drop_columns(["imported_quality_turns", "imported_complexity_turns"]), samples)  # as an older ingestion wrote it
    assert materialize([build_quality_scores(scorer.version())], shard, instance, resources, scorer).success
    assert layout.shard_file("quality_scores", shard).exists() and not layout.shard_file("quality_scores", shard).with_name(IMPORTED_MARKER).exists()
    from_raw = catalog_rows(layout, shard)
    assert from_raw.equals(from_columns) and from_raw.column("quality").null_count == 0
