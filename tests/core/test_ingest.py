"""Shard ingestion on bad inputs: every row accounted for, reasons name file, line and field."""

import json

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mig_assets.core.ingest import ingest_shard
from tests.conftest import REAL_DATA

GOOD = {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]}


def ingest(layout, name: str, content: bytes | str, **kwargs):
    path = layout.incoming_dir / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return ingest_shard(layout, layout.shard_key(path), path, run_id="test", **kwargs)


def quarantine(layout, stats) -> list[dict]:
    return pq.read_table(layout.shard_file("quarantine", stats.shard)).to_pylist()


def samples(layout, stats) -> list[dict]:
    return pq.read_table(layout.shard_file("raw_pool", stats.shard)).to_pylist()


def assert_accounted(stats):
    assert stats.rows_read == stats.rows_kept + stats.rows_quarantined + stats.duplicates


def line(record) -> str:
    return json.dumps(record)


def test_malformed_line_3_of_the_real_xsample_file(layout):
    stats = ingest(layout, "xsample_example.jsonl", (REAL_DATA / "xsample_example.jsonl").read_bytes())
    assert (stats.rows_read, stats.rows_kept, stats.rows_quarantined) == (10, 9, 1)
    [bad] = quarantine(layout, stats)
    assert bad["line_no"] == 3 and bad["field"] == "(line)"
    assert bad["reason"].startswith("incoming/xsample_example.jsonl, line 3, field (line): malformed JSON")
    original_line_3 = (REAL_DATA / "xsample_example.jsonl").read_text().splitlines()[2]
    assert bad["raw_text"] == original_line_3  # nothing lost
    kept = samples(layout, stats)
    assert all(row["imported_tags"] for row in kept) and all(row["imported_quality"] > 0 for row in kept)
    assert_accounted(stats)


def test_empty_file_gives_an_empty_shard(layout):
    stats = ingest(layout, "empty.jsonl", b"")
    assert (stats.rows_read, stats.rows_kept, stats.rows_quarantined) == (0, 0, 0)
    assert samples(layout, stats) == [] and quarantine(layout, stats) == []


def test_blank_lines_bom_and_crlf(layout):
    content = "\ufeff" + line(GOOD) + "\r\n\r\n   \r\n" + line({"instruction": "Hi", "output": "Hello"}) + "\r\n"
    stats = ingest(layout, "bom_crlf.jsonl", content)
    assert (stats.rows_read, stats.rows_kept, stats.blank_lines) == (2, 2, 2)
    rows = samples(layout, stats)
    assert [r["line_no"] for r in rows] == [1, 4]
    assert not rows[0]["raw"].startswith("\ufeff") and not rows[1]["raw"].endswith("\r")


def test_bad_records_are_quarantined_with_field_and_line(layout):
    records = [
        line(GOOD),
        line({"messages": [{"role": "user"}]}),
        line({"messages": [{"role": "user", "content": 7}]}),
        line({"conversations": [{"from": "alien", "value": "x"}]}),
        line({"conversations": []}),
        line({"unrelated": True}),
        "[1, 2]",
    ]
    stats = ingest(layout, "bad.jsonl", "\n".join(records))
    assert (stats.rows_read, stats.rows_kept, stats.rows_quarantined) == (7, 1, 6)
    by_line = {row["line_no"]: row for row in quarantine(layout, stats)}
    assert by_line[2]["field"] == "messages[0].content" and "missing content" in by_line[2]["reason"]
    assert by_line[3]["field"] == "messages[0].content" and "must be a string" in by_line[3]["reason"]
    assert by_line[4]["field"] == "conversations[0].from" and "unknown role 'alien'" in by_line[4]["reason"]
    assert by_line[5]["field"] == "conversations" and "empty conversation" in by_line[5]["reason"]
    assert "unrecognized format" in by_line[6]["reason"]
    assert "expected a JSON object" in by_line[7]["reason"]
    for lineno, row in by_line.items():
        assert row["reason"].startswith(f"incoming/bad.jsonl, line {lineno}, field ")
        assert row["raw_text"] == records[lineno - 1]
    assert_accounted(stats)


def test_a_10_mb_record_is_kept_under_the_limit_and_quarantined_over_it(layout):
    big = {"messages": [{"role": "user", "content": "x" * (10 * 1024 * 1024)}]}
    stats = ingest(layout, "big.jsonl", line(big) + "\n" + line(GOOD) + "\n")
    assert (stats.rows_kept, stats.rows_quarantined) == (2, 0)
    assert samples(layout, stats)[0]["n_chars"] == 10 * 1024 * 1024

    small = line({"instruction": "a small record"})
    stats = ingest(layout, "big_limited.jsonl", line(big) + "\n" + small + "\n", max_record_bytes=1024 * 1024)
    assert (stats.rows_kept, stats.rows_quarantined) == (1, 1)
    [bad] = quarantine(layout, stats)
    # measured while streaming, never held whole: quarantine keeps a preview and says where the rest is
    assert "over the max_record_bytes limit of 1,048,576" in bad["reason"] and "from byte 0" in bad["reason"]
    assert f"record is {len(line(big)):,} bytes" in bad["reason"] and bad["raw_text"] == line(big)[:65536]


def test_non_utf8_bytes_are_quarantined_and_kept_byte_for_byte(layout):
    bad_line = b'{"messages": [{"role": "user", "content": "caf\xe9"}]}'
    stats = ingest(layout, "latin1.jsonl", line(GOOD).encode() + b"\n" + bad_line + b"\n")
    assert (stats.rows_kept, stats.rows_quarantined) == (1, 1)
    [bad] = quarantine(layout, stats)
    assert bad["line_no"] == 2 and "invalid UTF-8 at byte" in bad["reason"]
    assert bad["raw_bytes"] == bad_line


def test_json_array_keeps_element_lines_and_quarantines_bad_elements(layout):
    content = "[\n" + ",\n".join(
        [json.dumps(GOOD, indent=1), json.dumps({"instruction": 1}), json.dumps({"instruction": "Hi"})]
    ) + "\n]\n"
    stats = ingest(layout, "array.json", content)
    assert (stats.rows_read, stats.rows_kept, stats.rows_quarantined, stats.container) == (3, 2, 1, "json_array")
    lines = content.splitlines()
    kept = samples(layout, stats)
    assert [lines[r["line_no"] - 1] for r in kept] == ["{", '{"instruction": "Hi"}']
    assert json.loads(kept[0]["raw"]) == GOOD
    [bad] = quarantine(layout, stats)
    assert lines[bad["line_no"] - 1] == '{"instruction": 1},' and bad["field"] == "instruction"


def test_truncated_json_array_quarantines_the_unparsed_remainder(layout):
    content = "[" + json.dumps(GOOD) + ",\n" + json.dumps(GOOD)[:-5]
    stats = ingest(layout, "truncated.json", content)
    assert (stats.rows_read, stats.rows_kept, stats.rows_quarantined) == (2, 1, 1)
    [bad] = quarantine(layout, stats)
    assert bad["line_no"] == 2 and "remaining" in bad["reason"] and bad["raw_text"] == json.dumps(GOOD)[:-5]


def test_single_object_json_file(layout):
    stats = ingest(layout, "one.json", json.dumps(GOOD, indent=2))
    assert (stats.rows_read, stats.rows_kept, stats.container) == (1, 1, "json_object")


def test_parquet_with_missing_columns_quarantines_every_row(layout):
    path = layout.incoming_dir / "wrong.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": [1, 2]}), path)
    stats = ingest_shard(layout, layout.shard_key(path), path)
    assert (stats.rows_read, stats.rows_kept, stats.rows_quarantined, stats.container) == (2, 0, 2, "parquet")
    rows = quarantine(layout, stats)
    assert [r["line_no"] for r in rows] == [1, 2]
    assert all("fields present: label, text" in r["reason"] for r in rows)
    assert json.loads(rows[0]["raw_text"]) == {"text": "a", "label": 1}


def test_parquet_chat_rows(layout):
    path = layout.incoming_dir / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD, {"messages": [{"role": "user", "content": None}]}]), path)
    stats = ingest_shard(layout, layout.shard_key(path), path)
    assert (stats.rows_kept, stats.rows_quarantined) == (1, 1)
    assert quarantine(layout, stats)[0]["field"] == "messages[0].content"


def test_gzipped_jsonl(layout):
    import gzip

    stats = ingest(layout, "pool.jsonl.gz", gzip.compress((line(GOOD) + "\n").encode()))
    assert stats.rows_kept == 1


def test_duplicates_within_and_across_shards_first_ingested_wins(layout):
    other = {"instruction": "Other", "output": "x"}
    first = ingest(layout, "a.jsonl", "\n".join([line(GOOD), line(GOOD), line(other)]))
    assert (first.rows_kept, first.duplicates_in_shard) == (2, 1)
    same_as_good = {"conversations": [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4"}]}
    second = ingest(layout, "b.jsonl", "\n".join([line(same_as_good), line({"instruction": "New"})]))
    assert (second.rows_kept, second.duplicates_of_other_shards) == (1, 1)
    assert samples(layout, second)[0]["duplicate_of"] == f"{first.shard}:1"
    assert_accounted(first) and assert_accounted(second)
    # re-ingesting the first shard does not see its own rows or the second shard's duplicate as owners
    again = ingest(layout, "a.jsonl", "\n".join([line(GOOD), line(GOOD), line(other)]))
    assert (again.rows_kept, again.duplicates) == (2, 1)


def test_ingesting_the_same_file_twice_changes_nothing(layout):
    content = (REAL_DATA / "mt_bench_questions.jsonl").read_bytes()
    first = ingest(layout, "mt.jsonl", content)
    before = pq.read_table(layout.shard_file("raw_pool", first.shard)).drop(["ingest_run_id"])
    second = ingest(layout, "mt.jsonl", content)
    after = pq.read_table(layout.shard_file("raw_pool", second.shard)).drop(["ingest_run_id"])
    assert before.equals(after)
    assert (first.rows_kept, first.file_sha256) == (second.rows_kept, second.file_sha256)


def test_catalog_views_answer_plain_sql(layout):
    ingest(layout, "a.jsonl", "\n".join([line(GOOD), "{oops"]))
    ingest(layout, "b.jsonl", line(GOOD))
    with duckdb.connect(str(layout.duckdb_path)) as con:
        assert set(layout.refresh_catalog(con)) == {"raw_pool_rows", "samples", "duplicates", "quarantine", "shards"}
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM samples").fetchone()[0] == 1
        assert con.execute("SELECT count(*) FROM duplicates").fetchone()[0] == 1
        assert con.execute("SELECT line_no FROM quarantine").fetchall() == [(2,)]
        assert con.execute("SELECT sum(rows_read) FROM shards").fetchone()[0] == 3


def test_unsupported_file_type_is_rejected(layout):
    path = layout.incoming_dir / "notes.txt"
    path.write_text("hello")
    from mig_assets.core.warehouse import ShardPathError

    with pytest.raises(ShardPathError, match="unsupported file type"):
        layout.shard_key(path)
