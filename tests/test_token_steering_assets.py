"""A token budget under constraints and a warm start through a real selection asset (spec YAML -> DuckDB -> members)."""

from collections import Counter

import duckdb
import pytest

from mig_assets.core.selection.specs import parse_specs
from tests.test_steering_assets import materialize, members, two_shard_pool  # noqa: F401 (the fixture)


@pytest.mark.slow
def test_token_budget_with_pins_and_a_share_cap_holds_them_on_the_kept_picks(two_shard_pool, layout, instance, resources, tmp_path):  # noqa: F811
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        pins = con.execute("SELECT sample_id, n_tokens_est FROM samples WHERE shard = 'b.jsonl' ORDER BY n_tokens_est DESC, sample_id LIMIT 2").fetchall()
        tokens = dict(con.execute("SELECT sample_id, n_tokens_est FROM samples").fetchall())
    (tmp_path / "pins.txt").write_text("\n".join(sid for sid, _ in pins))
    steered = {
        "name": "steered_tokens",
        "budget": {"tokens": 20000},
        "constraints": {"must_include": {"ids_file": "pins.txt"}, "max_share": {"by": "shard", "share": 0.5}},
        "stability": {"mode": "warm", "max_churn": 0.1},
    }
    [spec] = parse_specs({"selections": [steered]}, "selections.yaml", tmp_path)
    result = materialize(two_shard_pool, spec, instance, resources)
    picked = members(layout, "steered_tokens")
    m = len(picked)
    assert sum(tokens[sid] for _, sid, *_ in picked) <= 20000 and m > 10
    assert {sid for sid, _ in pins} <= {sid for _, sid, *_ in picked}  # the two longest samples of b.jsonl, pinned
    assert max(Counter(shard for _, _, shard, *_ in picked).values()) <= m // 2  # the cap on the picks kept
    report = result.asset_materializations_for_node("steered_tokens")[0].metadata["constraints"].value["selection"]
    assert report["must_include"] == 2

    again = materialize(two_shard_pool, spec, instance, resources).asset_materializations_for_node("steered_tokens")[0].metadata
    assert again["stability"].value["selection"]["removed"] == 0  # nothing new: the warm start keeps every pick
    assert {sid for _, sid, *_ in members(layout, "steered_tokens")} == {sid for _, sid, *_ in picked}  # (ordered by the greedy among them)
