"""Constraints through a real selection asset: spec YAML -> DuckDB resolution -> constrained greedy -> members."""

import json
from collections import Counter

import dagster as dg
import duckdb
import pytest
import yaml

from mig_assets.core.selection.specs import load_specs, parse_specs
from mig_assets.defs.selection.assets import build_selection_asset
from tests.conftest import MIG_FIXTURES

SHARD_ASSETS = ("raw_pool", "atomic_tags", "quality_scores")  # what MIG reads (no sample embeddings)
UPSTREAM = ("tag_vocabulary", "tag_embeddings", "label_graph")


def ingest(layout, instance, resources, assets, name: str, lines: list[str]) -> None:
    """Write a shard file, register its partition and materialize its per-shard assets."""
    (layout.incoming_dir / name).write_text("\n".join(lines) + "\n")
    instance.add_dynamic_partitions("pool_shards", [name])
    shard_assets = [a for a in assets if a.partitions_def is not None]
    assert dg.materialize(assets, selection=shard_assets, partition_key=name, instance=instance, resources=resources).success


def build_upstream(instance, resources, assets) -> None:
    """tag_vocabulary, tag_embeddings (the fixture's label vectors) and label_graph over the current pool."""
    run_config = {
        "ops": {
            "tag_embeddings": {"config": {"label_embeddings_prefix": str(MIG_FIXTURES / "p2k")}},
            "label_graph": {"config": {"valid_tag_path": str(MIG_FIXTURES / "valid_tags.json")}},
        }
    }
    chosen = [a for a in assets if a.key.to_user_string() in UPSTREAM]
    assert dg.materialize(assets, selection=chosen, instance=instance, resources=resources, run_config=run_config).success


def pool_assets():
    from mig_assets.definitions import defs

    return [a for a in defs.assets if a.key.to_user_string() in (*SHARD_ASSETS, *UPSTREAM)]


@pytest.fixture
def two_shard_pool(layout, instance, resources):
    """The reference fixture pool as two shards (a.jsonl: lines 1-1000, b.jsonl: the rest), tagged, with its label graph."""
    assets, lines = pool_assets(), (MIG_FIXTURES / "p2k.jsonl").read_text().splitlines()
    ingest(layout, instance, resources, assets, "a.jsonl", lines[:1000])
    ingest(layout, instance, resources, assets, "b.jsonl", lines[1000:])
    build_upstream(instance, resources, assets)
    return assets


def materialize(assets, spec, instance, resources, *, raise_on_error=True):
    asset = build_selection_asset(spec)
    return dg.materialize([*assets, asset], selection=[asset], instance=instance, resources=resources, raise_on_error=raise_on_error)


def members(layout, name: str) -> list[tuple]:
    """The latest version's members: rank, sample_id, shard, line_no, tags."""
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        return con.execute(
            "SELECT m.rank, m.sample_id, s.shard, s.line_no, a.tags FROM selection_members m JOIN samples s USING (sample_id) "
            "JOIN atomic_tags a USING (sample_id) WHERE m.selection = $name "
            "AND m.version = (SELECT max(version) FROM selection_members WHERE selection = $name) ORDER BY m.rank",
            {"name": name},
        ).fetchall()


@pytest.mark.slow
def test_constrained_spec_pins_bans_caps_and_bounds_inside_the_greedy(two_shard_pool, layout, instance, resources, tmp_path):
    plain = materialize(two_shard_pool, parse_specs({"selections": [{"name": "plain", "budget": {"count": 40}}]})[0], instance, resources)
    assert plain.success
    free = members(layout, "plain")
    free_shards = Counter(shard for _, _, shard, _, _ in free)
    busiest = max(free_shards, key=free_shards.get)
    assert free_shards[busiest] > 16  # the cap below binds
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        not_picked = [
            sid
            for (sid,) in con.execute(
                "SELECT sample_id FROM samples WHERE shard = 'b.jsonl' AND sample_id NOT IN (SELECT unnest($ids)) ORDER BY line_no LIMIT 3",
                {"ids": [m[1] for m in free]},
            ).fetchall()
        ]
        counts = Counter(tag for (tags,) in con.execute("SELECT tags FROM atomic_tags").fetchall() for tag in set(tags))
    picked_counts = Counter(tag for *_, tags in free for tag in set(tags))
    rare = min((tag for tag, n in counts.items() if n >= 20 and picked_counts[tag] < 2), key=lambda tag: (-counts[tag], tag))
    (tmp_path / "pinned.txt").write_text("# pinned by the curator\n" + "\n".join(s.upper() for s in not_picked) + "\n\n")
    document = {
        "selections": [
            {
                "name": "steered",
                "budget": {"count": 40},
                "constraints": {
                    "must_include": {"ids_file": "pinned.txt"},
                    "must_exclude": {"where": f"shard = '{busiest}' AND line_no <= 300"},
                    "max_share": {"by": "shard", "share": 1.0, "groups": {busiest: 0.4}},
                    "label_counts": {rare: {"min": 4, "max": 6}},
                },
            }
        ]
    }
    (tmp_path / "selections.yaml").write_text(yaml.safe_dump(document))
    [spec] = load_specs(tmp_path / "selections.yaml")
    result = materialize(two_shard_pool, spec, instance, resources)
    picked = members(layout, "steered")
    assert len(picked) == 40
    assert {sid for _, sid, _, _, _ in picked[:3]} == set(not_picked)  # pinned first
    assert not [p for p in picked if p[2] == busiest and p[3] <= 300]
    shards = Counter(shard for _, _, shard, _, _ in picked)
    assert shards[busiest] <= 16
    assert 4 <= sum(rare in tags for *_, tags in picked) <= 6
    metadata = result.asset_materializations_for_node("steered")[0].metadata
    report = metadata["constraints"].value
    assert report["spec"]["max_share"] == {"by": "shard", "share": 1.0, "groups": {busiest: 0.4}}
    assert report["selection"]["must_include"] == 3 and report["selection"]["max_share by shard"][busiest] == f"{shards[busiest]} / cap 16"
    assert metadata["objective"].value < plain.asset_materializations_for_node("plain")[0].metadata["objective"].value
    manifest = json.loads((layout.exports_dir / "steered" / "v0001" / "manifest.json").read_text())
    assert manifest["constraints"]["must_include"] == {"ids_file": str(tmp_path / "pinned.txt")} and manifest["stability"] is None


@pytest.mark.slow
def test_infeasible_constraints_fail_the_run_with_the_numbers(two_shard_pool, layout, instance, resources, tmp_path):
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        ids = [sid for (sid,) in con.execute("SELECT sample_id FROM samples ORDER BY shard, line_no LIMIT 12").fetchall()]
    (tmp_path / "pins.txt").write_text("\n".join(ids))
    document = {"selections": [{"name": "too_many", "budget": {"count": 10}, "constraints": {"must_include": {"ids_file": "pins.txt"}}}]}
    [spec] = parse_specs(document, "selections.yaml", tmp_path)
    result = materialize(two_shard_pool, spec, instance, resources, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "must_include pins 12 samples but the budget is 10 picks" in failure.event_specific_data.error.to_string()

    (tmp_path / "pins.txt").write_text(ids[0] + "\n" + "f" * 64 + "\n")
    [spec] = parse_specs(document, "selections.yaml", tmp_path)
    result = materialize(two_shard_pool, spec, instance, resources, raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert f"pins.txt line 2: sample_id '{'f' * 64}' is not in the pool" in failure.event_specific_data.error.to_string()


@pytest.mark.parametrize(
    "constraints, message",
    [
        ({"must_include": {"file": "x"}}, r"must_include: unknown keys \['file'\]"),
        ({"max_share": {"by": "colour", "share": 0.3}}, "max_share.by: expected one of source_file, shard, source_format"),
        ({"max_share": {"by": "shard", "share": 1.5}}, r"max_share.share: a share must be a number in \[0, 1\]"),
        ({"label_counts": {"python": {"min": -1}}}, "label_counts.python.min: expected a count >= 0"),
        ({"budget_cut": 1}, "unknown keys"),
    ],
)
def test_bad_constraint_specs_name_the_key(constraints, message):
    with pytest.raises(ValueError, match=message):
        parse_specs({"selections": [{"name": "a", "budget": {"count": 5}, "constraints": constraints}]}, "selections.yaml")


def test_constraints_refused_for_baselines_and_taken_with_token_budgets():
    with pytest.raises(ValueError, match="not 'random'"):
        parse_specs({"selections": [{"name": "a", "method": "random", "constraints": {"must_exclude": {"where": "true"}}}]}, "selections.yaml")
    steered = {"name": "a", "budget": {"tokens": 500}, "constraints": {"must_exclude": {"where": "true"}}, "stability": {"mode": "warm"}}
    [spec] = parse_specs({"selections": [steered]}, "selections.yaml")  # token budgets are fitted under constraints (core/selection/budget.py)
    assert spec.constraints is not None and spec.stability is not None and spec.stability.mode == "warm"
    assert json.dumps(parse_specs({"selections": [{"name": "a"}]})[0].constraints) == "null"


@pytest.mark.slow
def test_warm_reselection_after_growth_keeps_old_picks_and_says_why_each_changed(layout, instance, resources):
    assets, lines = pool_assets(), (MIG_FIXTURES / "p2k.jsonl").read_text().splitlines()
    document = {"selections": [{"name": "steady", "budget": {"count": 60}, "stability": {"mode": "warm", "max_churn": 0.1, "margin": 0.1}}]}
    [spec] = parse_specs(document, "selections.yaml")
    ingest(layout, instance, resources, assets, "a.jsonl", lines[:1500])
    build_upstream(instance, resources, assets)
    first = materialize(assets, spec, instance, resources).asset_materializations_for_node("steady")[0].metadata
    assert "stability" not in first  # nothing to start from
    before = {sid for _, sid, *_ in members(layout, "steady")}
    ingest(layout, instance, resources, assets, "b.jsonl", lines[1500:])
    build_upstream(instance, resources, assets)
    metadata = materialize(assets, spec, instance, resources).asset_materializations_for_node("steady")[0].metadata
    report = metadata["stability"].value
    after = members(layout, "steady")
    added = {sid for _, sid, *_ in after} - before
    assert len(after) == 60 and 0 < len(added) <= 6  # churn within floor(0.1 * 60)
    assert {shard for _, sid, shard, *_ in after if sid in added} == {"b.jsonl"}  # only new data displaced old picks
    assert report["selection"]["added_old_samples"] == 0 and report["selection"]["added_new_samples"] == len(added) == report["swaps"]
    assert report["fresh_greedy"]["removed"] >= report["selection"]["removed"]
    assert abs(report["objective_loss_vs_fresh"]) < 0.05
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        diff = con.execute("SELECT change, reason FROM selection_diffs WHERE selection = 'steady' AND version = 2").fetchall()
    assert sorted(change for change, _ in diff) == ["added"] * len(added) + ["removed"] * len(added)
    for change, reason in diff:
        assert reason.startswith("new sample: its gain" if change == "added" else "displaced by a new sample: its gain"), reason


@pytest.mark.slow
def test_sweep_and_stability_reports_over_one_loaded_pool(two_shard_pool, layout, instance, resources):
    from mig_assets.defs.steering.assets import selection_stability, selection_sweep

    run_config = {
        "ops": {
            "selection_sweep": {"config": {"budget_fractions": [0.01, 0.03], "budget_tokens": [20000], "phi_b": [0.7, 0.8]}},
            "selection_stability": {"config": {"tau_delta": 0.02}},
        }
    }
    result = dg.materialize(
        [*two_shard_pool, selection_sweep, selection_stability],
        selection=[selection_sweep, selection_stability],
        instance=instance,
        resources=resources,
        run_config=run_config,
    )
    sweep = result.asset_materializations_for_node("selection_sweep")[0].metadata
    assert sweep["points"].value == 6 and sweep["peak_memory_mib"].value > 0 and sweep["seconds"].value > 0
    page = (layout.exports_dir / "sweep" / "mig_selection" / "v0001" / "sweep.html").read_text()
    assert sweep["page"].value.endswith("sweep.html") and "mig phi_b=0.7" in page and "Pareto frontier" in page
    points = json.loads((layout.exports_dir / "sweep" / "mig_selection" / "v0001" / "points.json").read_text())
    assert {p["picks"] for p in points if p["budget"] == "fraction=0.01"} == {20}
    assert all(p["tokens"] <= 20000 for p in points if p["budget"] == "tokens=20000")
    assert any(p["frontier_objective"] for p in points) and sweep["plots"].value.count("data:image/png;base64,") == 3
    stability = result.asset_materializations_for_node("selection_stability")[0].metadata
    assert stability["runs"].value == 3 and 0 <= stability["stable_share"].value <= 1
    assert "tau 0.88" in stability["jaccard"].value and "tau 0.92" in stability["jaccard"].value
    report = (layout.exports_dir / "stability" / "mig_selection" / "v0001" / "report.html").read_text()
    assert "stable under every perturbation" in report and "data:image/png;base64," in report


@pytest.mark.slow
def test_tags_spec_with_constraints_holds_them_on_its_leaves(layout, instance, resources):
    from mig_assets.definitions import defs

    names = ("raw_pool", "atomic_tags", "quality_scores", "tag_vocabulary", "tag_embeddings", "knowledge_tree", "target_profile")
    assets = [a for a in defs.assets if a.key.to_user_string() in names]
    lines = (MIG_FIXTURES / "p2k.jsonl").read_text().splitlines()
    ingest(layout, instance, resources, assets, "a.jsonl", lines[:1000])
    ingest(layout, instance, resources, assets, "b.jsonl", lines[1000:])
    run_config = {"ops": {"tag_embeddings": {"config": {"label_embeddings_prefix": str(MIG_FIXTURES / "p2k")}}}}
    globals_ = [a for a in assets if not a.partitions_def]
    assert dg.materialize(assets, selection=globals_, instance=instance, resources=resources, run_config=run_config).success
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        leaf_counts = con.execute(
            """SELECT n.name, count(DISTINCT a.sample_id) FROM atomic_tags a, unnest(a.tags) AS u(tag)
               JOIN tree_tags t ON t.tag = u.tag JOIN tree_nodes n ON n.node_id = t.leaf GROUP BY n.name ORDER BY 2 DESC, 1"""
        ).fetchall()
    common, rare = leaf_counts[0][0], leaf_counts[len(leaf_counts) // 2][0]
    document = {
        "selections": [
            {
                "name": "tags_steered",
                "method": "tags",
                "budget": {"count": 40},
                "constraints": {
                    "must_exclude": {"where": "shard = 'a.jsonl' AND line_no <= 100"},
                    "max_share": {"by": "shard", "share": 1.0, "groups": {"a.jsonl": 0.5}},
                    "label_counts": {common: {"max": 3}, rare: {"min": 2}},
                },
            }
        ]
    }
    [spec] = parse_specs(document, "selections.yaml")
    result = materialize(globals_, spec, instance, resources)
    picked = members(layout, "tags_steered")
    assert len(picked) == 40 and not [p for p in picked if p[2] == "a.jsonl" and p[3] <= 100]
    assert Counter(p[2] for p in picked)["a.jsonl"] <= 20
    report = result.asset_materializations_for_node("tags_steered")[0].metadata["constraints"].value["selection"]
    low, high = report["label_counts"][f"leaf {rare}"], report["label_counts"][f"leaf {common}"]
    assert int(low.split(" in ")[0]) >= 2 and int(high.split(" in ")[0]) <= 3

    from mig_assets.defs.steering.assets import selection_sweep

    run_config = {"ops": {"selection_sweep": {"config": {"selection": "tags_5pct", "budget_fractions": [], "budget_counts": [10, 30], "lam": [1.0]}}}}
    sweep = dg.materialize([*globals_, selection_sweep], selection=[selection_sweep], instance=instance, resources=resources, run_config=run_config)
    points = json.loads((layout.exports_dir / "sweep" / "tags_5pct" / "v0001" / "points.json").read_text())
    assert [p["picks"] for p in points] == [10, 30] and all(p["kl"] is None for p in points)  # no target set: no KL
    assert points[0]["coverage"] <= points[1]["coverage"] and points[0]["objective"] < points[1]["objective"]
    assert sweep.asset_materializations_for_node("selection_sweep")[0].metadata["points"].value == 2

    from mig_assets.defs.steering.assets import selection_stability

    run_config = {"ops": {"selection_stability": {"config": {"selection": "tags_5pct"}}}}
    result = dg.materialize([*globals_, selection_stability], selection=[selection_stability], instance=instance, resources=resources, run_config=run_config)
    stability = result.asset_materializations_for_node("selection_stability")[0].metadata
    assert stability["runs"].value == 4 and 0 <= stability["stable_share"].value <= 1 and stability["picks"].value == 100
    jaccard = stability["jaccard"].value
    assert "(base)" in jaccard and "tree seed 1" in jaccard and "leaves (x0.8)" in jaccard and "leaves (x1.25)" in jaccard
