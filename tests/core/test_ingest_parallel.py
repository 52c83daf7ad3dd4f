"""A JSONL shard read in parts by worker processes gives exactly what one process reading it whole gives."""

import json

import pyarrow.parquet as pq
import pytest

from mig_assets.core.ingest import shards
from mig_assets.core.ingest.parts import jsonl_parts
from mig_assets.core.ingest.shards import ingest_shard
from mig_assets.core.store.catalog import WarehouseLayout


def chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}


def mixed_lines() -> list[bytes]:
    """Every kind of line the reader treats differently, with duplicates far apart (so in other parts)."""
    lines = [b"\xef\xbb\xbf" + json.dumps(chat(0)).encode()]  # a BOM on line 1 only
    for i in range(1, 400):
        kind = i % 9
        if kind == 0:
            lines.append(b"")  # blank
        elif kind == 1:
            lines.append(b'{"conversations": [{"from": "human", "value": "broken')  # malformed JSON
        elif kind == 2:
            lines.append(json.dumps(chat(i % 40)).encode())  # repeats an earlier sample, often one parts away
        elif kind == 3:
            lines.append(json.dumps({"instruction": f"do {i}", "input": "", "output": f"done {i}"}).encode())
        elif kind == 4:
            lines.append(b'{"messages": [{"role": "user", "content": "caf\xe9"}]}')  # not UTF-8
        elif kind == 5:
            lines.append(json.dumps({"messages": [{"role": "user", "content": "x" * 3000}], "id": i}).encode())  # over the limit below
        elif kind == 6:
            lines.append(json.dumps({"conversations": [{"from": "alien", "value": "x"}]}).encode() + b"\r")  # a bad role, CRLF
        else:
            lines.append(json.dumps(chat(i)).encode())
    return lines


def parquet_rows(layout: WarehouseLayout, asset: str, shard: str) -> list[dict]:
    return pq.read_table(layout.shard_file(asset, shard)).to_pylist()


def test_parts_start_at_line_starts_and_know_their_first_line(tmp_path):
    path = tmp_path / "lines.jsonl"
    content = b"\n".join(mixed_lines()) + b"\n"
    path.write_bytes(content)
    for n_parts in (1, 2, 3, 7):
        parts = jsonl_parts(path, n_parts)
        assert len(parts) == n_parts
        assert parts[0].start == 0 and parts[-1].end == len(content)
        for before, after in zip(parts, parts[1:]):
            assert before.end == after.start and content[after.start - 1 : after.start] == b"\n"
        for part in parts:
            assert part.first_line_no == content[: part.start].count(b"\n") + 1


def test_a_file_too_short_to_cut_gives_fewer_parts(tmp_path):
    path = tmp_path / "two.jsonl"
    path.write_bytes(b'{"instruction": "a"}\n{"instruction": "b"}\n')
    parts = jsonl_parts(path, 8)
    assert [(p.start, p.first_line_no) for p in parts] == [(0, 1), (21, 2)]


@pytest.mark.parametrize("workers", [2, 3])
def test_a_shard_read_in_parts_equals_the_shard_read_whole(layout, tmp_path, monkeypatch, workers):
    monkeypatch.setattr(shards, "PARALLEL_MIN_BYTES", 0)  # cut even this small file
    content = b"\n".join(mixed_lines()) + b"\n"
    whole_layout = WarehouseLayout(tmp_path / "whole").ensure()
    results = {}
    for target, n_workers in ((whole_layout, 1), (layout, workers)):
        path = target.incoming_dir / "mixed.jsonl"
        path.write_bytes(content)
        stats = ingest_shard(target, "mixed.jsonl", path, run_id="test", max_record_bytes=2048, workers=n_workers)
        results[n_workers] = stats
    whole, in_parts = results[1], results[workers]
    assert len(jsonl_parts(layout.incoming_dir / "mixed.jsonl", workers)) == workers
    ignore = {"seconds"}
    assert {k: v for k, v in in_parts.to_dict().items() if k not in ignore} == {k: v for k, v in whole.to_dict().items() if k not in ignore}
    for asset in ("raw_pool", "quarantine"):
        assert parquet_rows(layout, asset, "mixed.jsonl") == parquet_rows(whole_layout, asset, "mixed.jsonl")

    assert in_parts.duplicates_in_shard > 0 and in_parts.rows_quarantined > 0 and in_parts.blank_lines > 0
    rows = parquet_rows(layout, "raw_pool", "mixed.jsonl")
    first_line_of: dict[str, int] = {}
    for row in rows:  # every repeat points at the first line with that sample, wherever the parts were cut
        first = first_line_of.setdefault(row["sample_id"], row["line_no"])
        assert row["duplicate_of"] == (None if first == row["line_no"] else f"mixed.jsonl:{first}")
    assert in_parts.rows_read == in_parts.rows_kept + in_parts.rows_quarantined + in_parts.duplicates


def test_shards_read_in_parts_keep_first_ingested_shard_wins(layout, monkeypatch):
    monkeypatch.setattr(shards, "PARALLEL_MIN_BYTES", 0)
    first = layout.incoming_dir / "b_first.jsonl"
    second = layout.incoming_dir / "a_second.jsonl"  # sorts first by name: only the ingest order may decide
    first.write_text("".join(json.dumps(chat(i)) + "\n" for i in range(0, 60)))
    second.write_text("".join(json.dumps(chat(i)) + "\n" for i in range(40, 100)))
    ingest_shard(layout, "b_first.jsonl", first, workers=2)
    stats = ingest_shard(layout, "a_second.jsonl", second, workers=2)
    assert stats.duplicates_of_other_shards == 20 and stats.rows_kept == 40
    marked = {r["line_no"]: r["duplicate_of"] for r in parquet_rows(layout, "raw_pool", "a_second.jsonl")}
    assert [marked[n] for n in range(1, 21)] == [f"b_first.jsonl:{n}" for n in range(41, 61)]
    assert all(marked[n] is None for n in range(21, 61))
    again = ingest_shard(layout, "b_first.jsonl", first, workers=2)  # the winner re-ingested stays the winner
    assert again.duplicates_of_other_shards == 0 and again.rows_kept == 60


def test_a_range_of_shards_read_in_parallel_is_one_shard_after_another_in_order(tmp_path):
    """Shards read two at a time and committed in the range's order give the files that ingesting
    them one by one in that order gives: the same rows, the same duplicates of earlier shards (the
    first in the order wins, whichever worker finished first), the same quarantine and counts."""
    from mig_assets.core.ingest.shard_range import ingest_shard_range

    lines = mixed_lines()
    files = {f"{name}.jsonl": b"\n".join(lines[i::3]) + b"\n" for i, name in enumerate(["c", "a", "b"])}  # registered c, a, b
    layouts = {}
    for mode in ("one_by_one", "range"):
        layout = layouts[mode] = WarehouseLayout(tmp_path / mode).ensure()
        for name, content in files.items():
            (layout.incoming_dir / name).write_bytes(content)
        shards = [(name, layout.incoming_dir / name) for name in files]
        if mode == "one_by_one":
            every = [ingest_shard(layout, name, path, run_id="test", max_record_bytes=2048) for name, path in shards]
        else:
            committed = []
            every = ingest_shard_range(layout, shards, run_id="test", max_record_bytes=2048, workers=2, on_commit=lambda s: committed.append(s.shard))
            assert committed == list(files)  # put in place in the range's order
        assert [s.shard for s in every] == list(files)
    assert sum(s.duplicates_of_other_shards for s in every) > 0  # the case is exercised
    for name in files:
        for asset in ("raw_pool", "quarantine"):
            assert parquet_rows(layouts["range"], asset, name) == parquet_rows(layouts["one_by_one"], asset, name)
        stats = {mode: parquet_rows(layout, "shard_stats", name)[0] for mode, layout in layouts.items()}
        assert all(stats["range"][k] == stats["one_by_one"][k] for k in stats["range"] if k not in ("ingested_at", "seconds"))
    assert not [p for p in (tmp_path / "range").rglob(".staging-*")]  # nothing left behind


@pytest.mark.timeout(120)
def test_a_range_whose_commit_fails_stops_without_waiting_forever(tmp_path, monkeypatch):
    """The workers wait for the shards before theirs to be put in place; when a commit fails, they
    are let go, the error reaches the caller and nothing is put in place after it."""
    from mig_assets.core.ingest import shard_range

    layout = WarehouseLayout(tmp_path / "home").ensure()
    shards_in = []
    for name in ("a.jsonl", "b.jsonl", "c.jsonl"):
        (layout.incoming_dir / name).write_text("".join(json.dumps(chat(i)) + "\n" for i in range(50)))
        shards_in.append((name, layout.incoming_dir / name))

    def fail(layout, staged):
        raise OSError(f"disk full committing {staged.stats.shard}")

    monkeypatch.setattr(shard_range, "commit_shard", fail)
    with pytest.raises(OSError, match="committing a.jsonl"):
        shard_range.ingest_shard_range(layout, shards_in, workers=2)
    assert layout.shard_files("raw_pool") == []
