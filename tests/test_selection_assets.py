"""The MIG pipeline as Dagster assets: raw_pool -> atomic_tags -> tag_vocabulary -> tag_embeddings
-> label_graph -> selections, on real Parquet, DuckDB and materializations."""

import json
import shutil

import dagster as dg
import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from mig_assets.core.selection.specs import SelectionSpec, parse_specs
from mig_assets.defs.selection.assets import build_selection_asset, config_class_for
from tests.conftest import MIG_FIXTURES

GLOBAL_MIG = ("tag_vocabulary", "tag_embeddings", "label_graph", "mig_selection")


@pytest.fixture
def p2k_pool(layout, instance, resources):
    """The reference fixture pool ingested and tagged (imported InsTag annotations)."""
    from mig_assets.definitions import defs

    shutil.copyfile(MIG_FIXTURES / "p2k.jsonl", layout.incoming_dir / "p2k.jsonl")
    instance.add_dynamic_partitions("pool_shards", ["p2k.jsonl"])
    assets = list(defs.assets)
    shard_assets = [a for a in assets if a.partitions_def is not None]
    assert dg.materialize(assets, selection=shard_assets, partition_key="p2k.jsonl", instance=instance, resources=resources).success
    return assets


def run_mig(assets, instance, resources, *, tau=0.9, selection_config=None, nodes=GLOBAL_MIG):
    ops = {
        "tag_embeddings": {"config": {"label_embeddings_prefix": str(MIG_FIXTURES / "p2k")}},
        "label_graph": {"config": {"tau": tau, "valid_tag_path": str(MIG_FIXTURES / "valid_tags.json")}},
        "mig_selection": {"config": selection_config or {}},
    }
    run_config = {"ops": {name: ops[name] for name in nodes if name in ops}}
    chosen = [a for a in assets if a.key.to_user_string() in nodes]
    result = dg.materialize(assets, selection=chosen, instance=instance, resources=resources, run_config=run_config)
    assert result.success
    return result


def selected_original_ids(layout, export_dir) -> list[str]:
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        original = dict(con.execute("SELECT sample_id, original_id FROM samples").fetchall())
    lines = (export_dir / "data.jsonl").read_text().splitlines()
    return [original[json.loads(line)["sample_id"]] for line in lines]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["default", "tau_0.8"])
def test_dagster_pipeline_reproduces_the_reference_selection(case, p2k_pool, layout, instance, resources):
    expected = json.loads((MIG_FIXTURES / "expected.json").read_text())[case]
    config = {"budget_count": expected["n"], "budget_fraction": None, "prop_weight": expected["prop_weight"], "norm": expected["norm"]}
    result = run_mig(p2k_pool, instance, resources, tau=expected["tau"], selection_config=config)
    metadata = result.asset_materializations_for_node("mig_selection")[0].metadata
    export_dir = layout.exports_dir / "mig_selection" / "v0001"
    assert metadata["export_dir"].value == str(export_dir)
    assert selected_original_ids(layout, export_dir) == expected["order"]
    graph = result.asset_materializations_for_node("label_graph")[0].metadata
    assert graph["labels"].value == len(json.loads((MIG_FIXTURES / "p2k.labels.json").read_text()))


@pytest.mark.slow
def test_selection_is_persisted_exported_and_deterministic(p2k_pool, layout, instance, resources):
    config = {"budget_count": 50, "budget_fraction": None}
    first = run_mig(p2k_pool, instance, resources, selection_config=config)
    run_mig(p2k_pool, instance, resources, selection_config=config, nodes=("mig_selection",))
    v1, v2 = layout.exports_dir / "mig_selection" / "v0001", layout.exports_dir / "mig_selection" / "v0002"
    for name in ("data.jsonl", "data.parquet"):
        assert (v1 / name).read_bytes() == (v2 / name).read_bytes()  # same inputs + config = same bytes

    rows = [json.loads(line) for line in (v1 / "data.jsonl").read_text().splitlines()]
    assert [r["rank"] for r in rows] == list(range(1, 51))
    assert all(r["messages"][0]["role"] == "user" for r in rows)
    assert pq.read_table(v1 / "data.parquet").num_rows == 50
    info = json.loads((v1 / "dataset_info.json").read_text())
    assert info["mig_selection"]["formatting"] == "sharegpt" and info["mig_selection"]["columns"] == {"messages": "messages"}
    manifest = json.loads((v1 / "manifest.json").read_text())
    assert manifest["counts"]["selected"] == 50 and manifest["config"]["budget_count"] == 50
    assert manifest["inputs"]["label_graph"]["run_id"] == first.run_id
    assert manifest["pool_shards"] == ["p2k.jsonl"] and "Deita" in manifest["score_origin"]

    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        versions = con.execute("SELECT version, n_selected FROM selections WHERE selection = 'mig_selection' ORDER BY version").fetchall()
        assert versions == [(1, 50), (2, 50)]
        members = con.execute(
            "SELECT rank, gain, objective, top_labels FROM selection_members WHERE selection = 'mig_selection' AND version = 1 ORDER BY rank"
        ).fetchall()
    gains = [m[1] for m in members]
    objectives = [m[2] for m in members]
    assert gains == sorted(gains, reverse=True)  # gradient gains never grow
    assert all(b >= a for a, b in zip(objectives, objectives[1:]))
    assert all(1 <= len(m[3]) <= 3 for m in members)
    metadata = first.asset_materializations_for_node("mig_selection")[0].metadata
    assert 0 < metadata["label_coverage"].value <= 1 and "| selected |" in metadata["score_distribution"].value


@pytest.mark.slow
def test_token_budget_keeps_the_longest_fitting_greedy_prefix(p2k_pool, layout, instance, resources):
    result = run_mig(p2k_pool, instance, resources, selection_config={"budget_tokens": 5000, "budget_fraction": None})
    metadata = result.asset_materializations_for_node("mig_selection")[0].metadata
    assert 0 < metadata["selected_tokens_est"].value <= 5000
    count = run_mig(p2k_pool, instance, resources, selection_config={"budget_count": 1979, "budget_fraction": None}, nodes=("mig_selection",))
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        tokens = con.execute(
            """SELECT m.version, m.rank, s.n_tokens_est FROM selection_members m JOIN samples s USING (sample_id)
               WHERE m.selection = 'mig_selection' ORDER BY m.version, m.rank"""
        ).fetchall()
    by_tokens = [t for v, _, t in tokens if v == 1]
    full_order = [t for v, _, t in tokens if v == 2]
    assert full_order[: len(by_tokens)] == by_tokens  # a prefix of the unconstrained greedy order
    assert sum(full_order[: len(by_tokens) + 1]) > 5000  # the next pick would not fit
    assert count.success


@pytest.mark.slow
def test_label_missing_an_embedding_fails_with_its_name(p2k_pool, instance, resources, tmp_path):
    labels = json.loads((MIG_FIXTURES / "p2k.labels.json").read_text())
    vectors = np.load(MIG_FIXTURES / "p2k.emb.npy")
    (tmp_path / "partial.labels.json").write_text(json.dumps(labels[1:]))
    np.save(tmp_path / "partial.emb.npy", vectors[1:])
    run_config = {
        "ops": {
            "tag_embeddings": {"config": {"label_embeddings_prefix": str(tmp_path / "partial")}},
            "label_graph": {"config": {"valid_tag_path": str(MIG_FIXTURES / "valid_tags.json")}},
        }
    }
    chosen = [a for a in p2k_pool if a.key.to_user_string() in ("tag_vocabulary", "tag_embeddings", "label_graph")]
    with pytest.raises(Exception, match=f"have no embedding in tag_embeddings: \\['{labels[0]}'\\]"):
        dg.materialize(p2k_pool, selection=chosen, instance=instance, resources=resources, run_config=run_config)


def test_random_spec_is_seeded_and_needs_no_graph(layout, instance, resources):
    from mig_assets.definitions import atomic_tags
    from mig_assets.defs.pool.assets import raw_pool

    shutil.copyfile(MIG_FIXTURES / "pdup.jsonl", layout.incoming_dir / "pdup.jsonl")
    instance.add_dynamic_partitions("pool_shards", ["pdup.jsonl"])
    dg.materialize([raw_pool, atomic_tags], partition_key="pdup.jsonl", instance=instance, resources=resources)
    asset = build_selection_asset(SelectionSpec("random_small", method="random", budget={"count": 20}, seed=7))
    assert dg.AssetKey("label_graph") not in asset.asset_deps[asset.key]
    for _ in range(2):
        dg.materialize([raw_pool, atomic_tags, asset], selection=[asset], instance=instance, resources=resources)
    v1, v2 = (layout.exports_dir / "random_small" / f"v000{i}" / "data.jsonl" for i in (1, 2))
    assert v1.read_bytes() == v2.read_bytes() and len(v1.read_text().splitlines()) == 20
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        n_pool = con.execute("SELECT count(*) FROM samples").fetchone()[0]
    assert n_pool < 1334  # the third of exact copies in pdup.jsonl are kept once


def test_specs_become_assets_with_their_defaults():
    specs = parse_specs(
        {
            "selections": [
                {"name": "mig_5pct", "budget": {"fraction": 0.05}},
                {"name": "mig_tokens", "method": "mig", "budget": {"tokens": 20000}, "params": {"norm": True, "gain": "exact"}},
            ]
        }
    )
    config = config_class_for(specs[1])()
    assert (config.budget_tokens, config.norm, config.gain, config.budget_fraction) == (20000, True, "exact", None)
    assert config_class_for(specs[0])().budget_fraction == 0.05
    assets = [build_selection_asset(spec) for spec in specs]
    assert [a.key.to_user_string() for a in assets] == ["mig_5pct", "mig_tokens"]


@pytest.mark.parametrize(
    "document, message",
    [
        ({"selections": [{"name": "Bad Name"}]}, "lower_snake_case"),
        ({"selections": [{"name": "a"}, {"name": "a"}]}, "declared twice"),
        ({"selections": [{"name": "a", "method": "magic"}]}, "not one of"),
        ({"selections": [{"name": "a", "budget": {"count": 1, "tokens": 2}}]}, "exactly one of"),
        ({"selections": [{"name": "a", "colour": "red"}]}, "unknown keys"),
        ({}, "non-empty `selections:` list"),
    ],
)
def test_bad_specs_are_refused_with_the_reason(document, message):
    with pytest.raises(ValueError, match=message):
        parse_specs(document, "selections.yaml")


def test_unknown_spec_parameter_is_refused():
    with pytest.raises(ValueError, match="unknown parameters \\['temperature'\\]"):
        config_class_for(SelectionSpec("a", params={"temperature": 1.0}))


@pytest.mark.slow
def test_explain_follows_a_sample_from_selection_back_to_its_shard(p2k_pool, layout, instance, resources):
    from mig_assets.core.outputs.explain import explain

    run_mig(p2k_pool, instance, resources, selection_config={"budget_count": 40, "budget_fraction": None})
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        picked = con.execute("SELECT sample_id, gain FROM selection_members WHERE rank = 7").fetchall()[0]
        unpicked = con.execute(
            "SELECT sample_id FROM samples WHERE imported_tags IS NOT NULL AND len(imported_tags) > 0 AND sample_id NOT IN "
            "(SELECT sample_id FROM selection_members) ORDER BY sample_id LIMIT 5"
        ).fetchall()
        chosen = explain(con, picked[0][:10], "mig_selection")
        rejected = [explain(con, sid, "mig_selection") for (sid,) in unpicked]
        assert explain(con, picked[0][:10].upper(), "mig_selection")["sample_id"] == picked[0]  # any case
        with pytest.raises(ValueError, match=r"no selection 'nope' in the catalog; known selections \(latest version\): mig_selection \(v1\)"):
            explain(con, picked[0], "nope")
        with pytest.raises(ValueError, match="no selection 'mig_selection' version 99 in the catalog"):
            explain(con, picked[0], "mig_selection", 99)
    assert chosen["source"]["shard"] == "p2k.jsonl" and chosen["source"]["source_file"] == "incoming/p2k.jsonl"
    line = (MIG_FIXTURES / "p2k.jsonl").read_text().splitlines()[chosen["source"]["line_no"] - 1]
    assert json.loads(line)["_id"] == chosen["source"]["original_id"]
    assert chosen["tags"]["tagger"] == "imported" and chosen["tags"]["status"] == "ok"
    assert chosen["raw_record"]["text"] == line and chosen["changed_since_version"] == {}
    assert chosen["selection"]["selected"] and chosen["selection"]["rank"] == 7 and chosen["selection"]["gain"] == picked[1]
    for answer in rejected:
        fate = answer["selection"]
        assert not fate["selected"] and 0 <= fate["gain_at_end"] <= fate["last_pick_gain"]  # greedy: it could not win
        assert "below the last pick's gain" in fate["why_not"]


@pytest.mark.slow
def test_reselection_after_the_pool_grows_reports_its_diff_and_a_report(p2k_pool, layout, instance, resources):
    config = {"budget_count": 60, "budget_fraction": None}
    run_mig(p2k_pool, instance, resources, selection_config=config)
    # grow the pool: a new shard of high-quality copies of other samples with fresh wording
    records = [json.loads(line) for line in (MIG_FIXTURES / "p2k.jsonl").read_text().splitlines()[1000:1100]]
    for i, record in enumerate(records):
        record["dialogs"][0]["content"] = f"(new) {record['dialogs'][0]['content']}"
        if record.get("annotation", {}).get("deita"):
            record["annotation"]["deita"]["quality_scores"] = [q * 50 for q in record["annotation"]["deita"]["quality_scores"]]
    (layout.incoming_dir / "grown.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    instance.add_dynamic_partitions("pool_shards", ["grown.jsonl"])
    shard_assets = [a for a in p2k_pool if a.partitions_def is not None]
    dg.materialize(p2k_pool, selection=shard_assets, partition_key="grown.jsonl", instance=instance, resources=resources)
    result = run_mig(p2k_pool, instance, resources, selection_config=config)
    metadata = result.asset_materializations_for_node("mig_selection")[0].metadata
    assert metadata["version"].value == 2 and metadata["added"].value == metadata["removed"].value > 0
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        diff = con.execute("SELECT d.change, d.reason, s.shard FROM selection_diffs d JOIN samples s USING (sample_id) WHERE d.version = 2").fetchall()
    added = [(reason, shard) for change, reason, shard in diff if change == "added"]
    removed = [reason for change, reason, _ in diff if change == "removed"]
    assert any(shard == "grown.jsonl" for _, shard in added)
    for reason, shard in added:
        expected = "new sample: shard grown.jsonl" if shard == "grown.jsonl" else "now within the budget"
        assert reason.startswith(expected), (reason, shard)
    assert all(reason.startswith("displaced") for reason in removed)
    report = (layout.exports_dir / "mig_selection" / "v0002" / "report.html").read_text()
    assert "changes since the previous version" in report and "new sample: shard grown.jsonl" in report
    assert report.count("data:image/png;base64,") == 3
    assert "data:image/png;base64," in metadata["plots"].value
