"""Shard ingestion on bad inputs: every row accounted for, reasons name file, line and field."""

import gc
import json

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mig_assets.core.ingest import shards
from mig_assets.core.ingest.readers import DEFAULT_MAX_RECORD_BYTES
from mig_assets.core.ingest.shards import ShardContext, commit_shard, ingest_shard, read_part, stage_shard
from mig_assets.core.store.catalog import publish_catalog
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


def task(i: int) -> str:
    return line({"instruction": f"task {i}", "output": "x"})


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


def test_lines_of_ascii_whitespace_only_are_blank_and_others_are_records(layout):
    # blank: what bytes.strip() removes (space, \t, \v, \f, \r); a no-break space byte is a record
    content = line(GOOD).encode() + b"\n \t\x0b\x0c\n\r\n\x0c\n\xa0\n \x00 \n" + line(GOOD).encode() + b"  \n"
    stats = ingest(layout, "whitespace.jsonl", content)
    assert (stats.rows_read, stats.rows_kept, stats.duplicates, stats.rows_quarantined, stats.blank_lines) == (4, 1, 1, 2, 3)
    assert [(q["line_no"], q["field"]) for q in quarantine(layout, stats)] == [(5, "(line)"), (6, "(line)")]
    assert [r["raw"] for r in samples(layout, stats)] == [line(GOOD), line(GOOD) + "  "]


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
    content = "[\n" + ",\n".join([json.dumps(GOOD, indent=1), json.dumps({"instruction": 1}), json.dumps({"instruction": "Hi"})]) + "\n]\n"
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


def test_duplicates_of_earlier_shards_are_marked_before_the_one_write(layout, monkeypatch):
    """Staging marks the rows earlier shards keep before it writes the file: the commit reads no
    Parquet back and rewrites nothing."""
    ingest(layout, "a.jsonl", "\n".join(task(i) for i in range(30)))
    reads, read_table = [], pq.read_table
    monkeypatch.setattr(shards.pq, "read_table", lambda *args, **kwargs: reads.append(args) or read_table(*args, **kwargs))
    second = ingest(layout, "b.jsonl", "\n".join(task(i) for i in range(20, 50)))
    assert (second.rows_kept, second.duplicates_of_other_shards) == (20, 10) and reads == []
    monkeypatch.undo()
    assert [r["duplicate_of"] for r in samples(layout, second)][:11] == [f"a.jsonl:{n}" for n in range(21, 31)] + [None]


def test_a_shard_put_in_place_between_staging_and_commit_is_marked_against(layout):
    """A shard put in place after another was staged (by another writer) is looked at when that one
    is committed: its duplicates are marked then, and the staging file rewritten with them."""
    (layout.incoming_dir / "b.jsonl").write_text("\n".join(task(i) for i in range(20, 50)))
    context = ShardContext("b.jsonl", "b.jsonl", "test", "auto", DEFAULT_MAX_RECORD_BYTES)
    staged = stage_shard(layout, layout.incoming_dir / "b.jsonl", context)
    assert staged.stats.duplicates_of_other_shards == 0  # nothing else in place yet
    first = ingest(layout, "a.jsonl", "\n".join(task(i) for i in range(30)))
    second = commit_shard(layout, staged)
    assert (first.rows_kept, second.rows_kept, second.duplicates_of_other_shards) == (30, 20, 10)
    assert [r["duplicate_of"] for r in samples(layout, second)][:11] == [f"a.jsonl:{n}" for n in range(21, 31)] + [None]
    assert_accounted(second)


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
    assert publish_catalog(layout) == "created"
    assert set(layout.view_definitions()) == {"raw_pool_rows", "samples", "duplicates", "quarantine", "shards"}
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM samples").fetchone()[0] == 1
        assert con.execute("SELECT count(*) FROM duplicates").fetchone()[0] == 1
        assert con.execute("SELECT line_no FROM quarantine").fetchall() == [(2,)]
        assert con.execute("SELECT sum(rows_read) FROM shards").fetchone()[0] == 3


def test_unsupported_file_type_is_rejected(layout):
    path = layout.incoming_dir / "notes.txt"
    path.write_text("hello")
    from mig_assets.core.store.layout import ShardPathError

    with pytest.raises(ShardPathError, match="unsupported file type"):
        layout.shard_key(path)


# --- damaged containers: every readable record kept, the unreadable part quarantined where it broke


def records(n: int) -> list[dict]:
    return [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(n)]


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(line(r) + "\n" for r in rows).encode()


def test_json_array_with_a_lone_surrogate_loses_only_that_element(layout):
    content = "[" + line(GOOD) + ',\n{"instruction": "\\ud800 broken", "output": "x"},\n' + line(records(1)[0]) + "]"
    stats = ingest(layout, "surrogate.json", content)
    assert (stats.rows_read, stats.rows_kept, stats.rows_quarantined, stats.container_errors) == (3, 2, 1, [])
    [bad] = quarantine(layout, stats)
    assert bad["line_no"] == 2 and "unreadable JSON value" in bad["reason"] and "surrogate" in bad["reason"].lower()


def test_json_array_with_100000_nested_arrays_loses_only_that_element(layout):
    content = "[" + line(GOOD) + ",\n" + "[" * 100_000 + "]" * 100_000 + ",\n" + line(records(1)[0]) + "]"
    stats = ingest(layout, "nested.json", content)
    assert (stats.rows_read, stats.rows_kept, stats.rows_quarantined) == (3, 2, 1)
    [bad] = quarantine(layout, stats)
    assert bad["line_no"] == 2 and "depth limit exceeded" in bad["reason"]


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".json.gz"])
def test_truncated_gzip_keeps_every_line_before_the_break(layout, suffix):
    import gzip

    rows = records(10_000)
    body = jsonl_bytes(rows) if suffix == ".jsonl.gz" else json.dumps(rows, indent=0).encode()
    packed = gzip.compress(body)
    stats = ingest(layout, "truncated" + suffix, packed[: len(packed) * 2 // 3])
    assert_accounted(stats)
    assert stats.rows_kept > 5000 and stats.rows_quarantined == 1 and len(stats.container_errors) == 1
    [bad] = quarantine(layout, stats)
    assert "damaged compressed stream: EOFError" in bad["reason"] and "truncated" + suffix in bad["reason"]
    kept = samples(layout, stats)
    assert [r["line_no"] for r in kept] == sorted(r["line_no"] for r in kept)
    if suffix == ".jsonl.gz":  # the record after the last kept line is where it broke, with its byte offset
        assert bad["line_no"] == stats.rows_kept + 1 and f"at line {stats.rows_kept + 1} (byte " in bad["reason"]


def test_a_gz_that_is_not_gzip_is_one_quarantined_record(layout):
    stats = ingest(layout, "plain.jsonl.gz", jsonl_bytes(records(3)))
    assert (stats.rows_read, stats.rows_kept, stats.rows_quarantined) == (1, 0, 1)
    assert "not a valid gzip stream" in stats.container_errors[0] and "at line 1 (byte 0" in stats.container_errors[0]


def parquet_bytes(rows: list[dict], tmp_path, row_group_size: int) -> bytes:
    path = tmp_path / "whole.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size, compression="snappy")
    return path.read_bytes()


def test_parquet_with_a_corrupt_page_loses_only_its_row_group(layout, tmp_path):
    data = bytearray(parquet_bytes(records(10_000), tmp_path, 2500))
    (tmp_path / "whole.parquet").write_bytes(data)
    page = pq.ParquetFile(tmp_path / "whole.parquet").metadata.row_group(1).column(0).data_page_offset
    for i in range(page + 30, page + 200):  # scramble the compressed data of row group 1's first page
        data[i] ^= 0x5A
    stats = ingest(layout, "corrupt_page.parquet", bytes(data))
    assert (stats.rows_read, stats.rows_kept, stats.rows_quarantined) == (7501, 7500, 1)
    [bad] = quarantine(layout, stats)
    assert bad["field"] == "(row group 1)" and bad["line_no"] == 2501
    assert "undecodable Parquet row group 1 (rows 2,501 to 5,000)" in bad["reason"]
    kept = {r["line_no"] for r in samples(layout, stats)}
    assert kept == set(range(1, 2501)) | set(range(5001, 10_001))


def test_truncated_parquet_is_one_quarantined_record_naming_the_file(layout, tmp_path):
    data = parquet_bytes(records(100), tmp_path, 50)
    stats = ingest(layout, "truncated.parquet", data[: len(data) // 2])
    assert (stats.rows_read, stats.rows_kept, stats.rows_quarantined) == (1, 0, 1)
    [bad] = quarantine(layout, stats)
    assert bad["reason"].startswith("incoming/truncated.parquet, line 1, field (file): not a readable Parquet file")


def test_an_oversized_line_is_measured_without_being_held(layout):
    """A 64 MiB line over a 1 MiB limit: the reader never holds more than the limit of it."""
    import tracemalloc

    from mig_assets.core.ingest.readers import ReadStats, read_records

    path = layout.incoming_dir / "huge.jsonl"
    with open(path, "wb") as handle:
        handle.write(line(GOOD).encode() + b"\n" + b'{"prompt": "' + b"x" * (64 << 20) + b'"}\n' + line(GOOD).encode() + b"\n")
    tracemalloc.start()
    try:
        read = [(r.line_no, r.error is None) for r in read_records(path, ReadStats(), max_record_bytes=1 << 20)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert read == [(1, True), (2, False), (3, True)]
    assert peak < 8 << 20, f"peak {peak:,} bytes"


def test_stale_staging_files_of_dead_writers_are_removed(layout):
    import subprocess

    stats = ingest(layout, "a.jsonl", line(GOOD) + "\n")
    folder = layout.shard_file("raw_pool", stats.shard).parent
    live = subprocess.Popen(["sleep", "60"])
    try:
        dead_file, live_file = folder / ".staging-999999999.parquet", folder / f".staging-{live.pid}.parquet"
        dead_file.write_bytes(b"half a file")
        live_file.write_bytes(b"being written")
        stats = ingest(layout, "a.jsonl", line(GOOD) + "\n")
        assert not dead_file.exists() and live_file.exists()
        assert stats.stale_staging_removed == [str(dead_file)]
    finally:
        live.kill()
        live.wait()


def test_reading_a_shard_pauses_the_garbage_collector_and_restores_it(layout):
    """Every automatic collection would traverse all the rows kept so far (their tag and score
    lists): read_part runs none, and leaves the collector as it found it, also when reading fails."""
    rows = [
        {
            "messages": [{"role": "user", "content": f"What is {i}+2?"}, {"role": "assistant", "content": str(i + 2)}],
            "annotation": {"instag": {"content": ["arithmetic"]}, "deita": {"quality_scores": [1.5], "complexity_scores": [2.0, 3.0]}},
        }
        for i in range(5000)
    ]
    path = layout.incoming_dir / "annotated.jsonl"
    path.write_text("".join(line(row) + "\n" for row in rows))
    context = ShardContext("annotated", "annotated.jsonl", "test", "auto", DEFAULT_MAX_RECORD_BYTES)
    collections = []
    collect = lambda phase, info: collections.append(info["generation"]) if phase == "start" else None  # noqa: E731
    gc.callbacks.append(collect)
    try:
        part = read_part(path, None, context)
    finally:
        gc.callbacks.remove(collect)
    # at most the one young-generation collection that the paused allocations trigger once it resumes
    assert collections in ([], [0]) and gc.isenabled()
    assert part.samples.num_rows == 5000 and part.samples.column("imported_complexity_turns")[0].as_py() == [2.0]
    with pytest.raises(FileNotFoundError):
        read_part(path.with_name("missing.jsonl"), None, context)
    assert gc.isenabled()
    gc.disable()
    try:
        read_part(path, None, context)
        assert not gc.isenabled()  # a caller's paused collector stays paused
    finally:
        gc.enable()


def test_a_shard_read_in_chunks_writes_the_same_file_as_in_one(layout, monkeypatch):
    """Kept rows become Arrow CHUNK_ROWS at a time (bounded memory); the samples file is the same bytes."""
    from mig_assets.core.ingest import shards

    records = [{"messages": [{"role": "user", "content": f"q{i % 40}"}, {"role": "assistant", "content": "a"}]} for i in range(120)]
    content = "\n".join([line(r) if i % 17 else "not json" for i, r in enumerate(records)]) + "\n"
    written = []
    for chunk_rows, batch_rows in ((10_000, 5000), (6, 3)):  # one chunk; many, each a multiple of the row group
        monkeypatch.setattr(shards, "CHUNK_ROWS", chunk_rows)
        monkeypatch.setattr(shards, "BATCH_ROWS", batch_rows)
        stats = ingest(layout, "chunked.jsonl", content)
        assert_accounted(stats)
        written.append(([dict(r, ingest_run_id="") for r in samples(layout, stats)], quarantine(layout, stats)))
    assert written[0] == written[1]
    assert len(written[0][0]) == 120 - 8 and [r["line_no"] for r in written[0][0]] == [i + 1 for i in range(120) if i % 17]
    assert sum(r["duplicate_of"] is not None for r in written[0][0]) == 112 - 40


def test_a_shard_keeps_dictionaries_only_for_its_repeating_columns(layout):
    stats = ingest(layout, "enc.jsonl", "\n".join([task(i) for i in range(50)] + [line(GOOD), line(GOOD)]))
    row_group = pq.ParquetFile(layout.shard_file("raw_pool", stats.shard)).metadata.row_group(0)
    dictionary = {row_group.column(i).path_in_schema for i in range(row_group.num_columns) if "RLE_DICTIONARY" in row_group.column(i).encodings}
    # one shard, one source file, one run, a few roles: dictionary pages; ids and raw records: plain
    assert {"shard", "source_file", "ingest_run_id", "messages.list.element.role", "duplicate_of"} <= dictionary
    assert dictionary.isdisjoint({"sample_id", "raw", "line_no", "messages.list.element.content"})
    assert [row["duplicate_of"] for row in samples(layout, stats)][-2:] == [None, f"{stats.shard}:51"]


def test_dictionary_columns_names_the_parquet_leaves_but_the_distinct_ones():
    from mig_assets.core.store.parquet import dictionary_columns

    schema = pa.schema([("id", pa.string()), ("tags", pa.list_(pa.string())), ("turns", pa.list_(pa.struct([("role", pa.string()), ("text", pa.string())])))])
    assert dictionary_columns(schema, ()) == ["id", "tags.list.element", "turns.list.element.role", "turns.list.element.text"]
    assert dictionary_columns(schema, ("id", "turns.list.element.text")) == ["tags.list.element", "turns.list.element.role"]
    assert dictionary_columns(schema, ("turns",)) == ["id", "tags.list.element"]
