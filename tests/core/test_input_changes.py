"""What changed in a previous version's members' inputs: the Arrow prefilter of ``member_changes``
gives exactly what ``input_changes`` finds row by row, and ``values_differ`` compares lists and
nulls as Python does."""

import numpy as np
import pyarrow as pa
import pytest

from mig_assets.core.selection.input_changes import input_changes, member_changes, values_differ
from mig_assets.core.selection.lineage import INPUTS_SCHEMA


@pytest.mark.parametrize(
    "a, b",
    [
        (
            [["x", "y"], ["x"], None, [], None, ["x", None], ["a", "b"], ["b", "a"]],
            [["x", "y"], ["x", "z"], None, None, [], ["x", None], ["a", "c"], ["a", "b"]],
        ),
        (["ok", None, "failed", None], ["ok", "ok", "failed", None]),
        ([1.0, None, 2.5, 3.0], [1.0, None, 2.5, 3.5]),
    ],
)
def test_values_differ_is_python_inequality_row_by_row(a, b):
    differs = values_differ(pa.chunked_array([pa.array(a)]), pa.chunked_array([pa.array(b)])).to_pylist()
    assert differs == [x != y for x, y in zip(a, b)]


def test_member_changes_finds_what_a_row_by_row_comparison_finds():
    rng = np.random.default_rng(7)
    base = {name: None for name in INPUTS_SCHEMA.names}
    then_rows, now_rows = [], []
    for i in range(300):
        row = base | {
            "sample_id": f"s{i:03d}",
            "rank": i + 1,
            "shard": "a.jsonl",
            "line_no": i,
            "file_sha256": "f" * 64,
            "ingest_run_id": "run-1",
            "tags": ["x", f"t{i % 7}"],
            "tag_status": "ok",
            "tagger": "imported",
            "weight": float(i % 5),
            "weight_origin": "imported Deita annotation",
            "raw": f'{{"id": {i}}}',
        }
        then_rows.append(row)
        now = dict(row, rank=None)
        change = rng.integers(0, 8)
        if change == 1:
            now["tags"] = ["x", "other"]
        elif change == 2:
            now["weight"], now["weight_origin"] = 9.0, "quality_scores (llm:judge v1)"
        elif change == 3:
            now["raw"], now["line_no"] = f'{{"id": {i}, "edited": 1}}', i + 1000
        elif change == 4:
            now["embedding_model"] = "minilm"
        elif change == 5:
            continue  # left the pool
        elif change == 6:
            now["weight_origin"] = None  # unscored now as then (a fill is not a score): no change
            then_rows[-1] = dict(row, weight_origin=f"no score: the pool median {row['weight']}")
        now_rows.append(now)
    previous = pa.Table.from_pylist(then_rows, schema=INPUTS_SCHEMA)
    current = pa.Table.from_pylist(now_rows[::-1], schema=INPUTS_SCHEMA)  # any order
    facts = {"shards": {"a.jsonl": {"atomic_tags": {"run_id": "t1"}}}}
    now_of = {row["sample_id"]: row for row in now_rows}
    expected = []
    for then in then_rows:
        now = now_of.get(then["sample_id"])
        changes = input_changes(then, now, facts["shards"]["a.jsonl"], facts["shards"]["a.jsonl"] if now else None)
        if changes:
            expected.append({"sample_id": then["sample_id"], "rank": then["rank"], **changes})
    found = member_changes(previous, facts, current, facts)
    assert found == expected
    assert {"tags", "quality", "raw_record", "embedding_model", "removed_from_pool"} <= {key for change in found for key in change}
    assert len(found) < len(then_rows)  # unchanged members (and the unscored ones) are not listed
