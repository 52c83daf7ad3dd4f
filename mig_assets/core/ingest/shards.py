"""Ingest one shard file into the warehouse: canonical samples, quarantine, duplicates, stats.

Accounting invariant, checked on every shard: ``rows_read = rows_kept + rows_quarantined +
duplicates``. A duplicate is a row whose ``sample_id`` was already kept, earlier in the same shard
or in another shard ingested before this one (the first ingested shard wins). Duplicate rows are
stored too (with ``duplicate_of``), so a later change to the winning shard can never lose them.

Memory is bounded by the shard, not the pool: rows are written in batches, and the cross-shard
lookup joins this shard's ids against the other shards' Parquet inside DuckDB.
"""

from __future__ import annotations

import gc
import hashlib
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mig_assets.core.ingest.columns import SAMPLE_DICTIONARY, SAMPLE_SCHEMA, SampleColumns
from mig_assets.core.ingest.parts import JsonlPart, end_with_parent, is_splittable, jsonl_parts
from mig_assets.core.ingest.readers import (
    DEFAULT_MAX_RECORD_BYTES,
    RawRecord,
    ReadStats,
    read_jsonl_part,
    read_records,
)
from mig_assets.core.ingest.records import CanonicalRecord, RecordError, canonicalize
from mig_assets.core.store.catalog import WarehouseLayout
from mig_assets.core.store.parquet import remove_stale_staging, write_parquet_atomic

QUARANTINE_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("source_file", pa.string()),
        ("line_no", pa.int64()),
        ("field", pa.string()),
        ("reason", pa.string()),
        ("raw_text", pa.string()),
        ("raw_bytes", pa.binary()),
        ("ingest_run_id", pa.string()),
    ]
)
STATS_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("source_file", pa.string()),
        ("file_sha256", pa.string()),
        ("file_bytes", pa.int64()),
        ("container", pa.string()),
        ("rows_read", pa.int64()),
        ("rows_kept", pa.int64()),
        ("rows_quarantined", pa.int64()),
        ("duplicates_in_shard", pa.int64()),
        ("duplicates_of_other_shards", pa.int64()),
        ("blank_lines", pa.int64()),
        ("formats", pa.string()),
        ("container_errors", pa.list_(pa.string())),
        ("ingest_run_id", pa.string()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
        ("seconds", pa.float64()),
    ]
)
BATCH_ROWS = 5000  # rows per Parquet row group
# kept rows turned into Arrow at a time: the next chunk's Python objects reuse the memory of the last's
# (a whole shard of them is about 10x its file), and a multiple of BATCH_ROWS writes the same row groups
CHUNK_ROWS = 2 * BATCH_ROWS
DUCKDB_MEMORY_LIMIT = "512MB"
DEFAULT_WORKERS = 2  # processes reading one shard: this machine's two cores
PARALLEL_MIN_BYTES = 8 << 20  # a smaller file is read in the calling process: starting workers costs more than it saves


@dataclass
class ShardStats:
    shard: str
    source_file: str
    file_sha256: str
    file_bytes: int
    container: str = ""
    rows_read: int = 0
    rows_kept: int = 0
    rows_quarantined: int = 0
    duplicates_in_shard: int = 0
    duplicates_of_other_shards: int = 0
    blank_lines: int = 0
    formats: dict[str, int] = field(default_factory=dict)
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    container_errors: list[str] = field(default_factory=list)  # damage to the file itself, one line each
    stale_staging_removed: list[str] = field(default_factory=list)  # left behind by a crashed earlier run
    ingest_run_id: str = ""
    seconds: float = 0.0

    @property
    def duplicates(self) -> int:
        return self.duplicates_in_shard + self.duplicates_of_other_shards

    def to_dict(self) -> dict:
        return {**asdict(self), "duplicates": self.duplicates}


class AccountingError(RuntimeError):
    """rows_read != rows_kept + rows_quarantined + duplicates: a bug, never a data problem."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ingest_shard(
    layout: WarehouseLayout,
    shard: str,
    path: Path,
    *,
    run_id: str = "",
    source_format: str = "auto",
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    workers: int = DEFAULT_WORKERS,
) -> ShardStats:
    """Read ``path`` and (re)write the shard's samples, quarantine and stats Parquet files.

    Outputs replace the previous version of the shard atomically; stats are written last, so
    their presence marks a complete shard. An uncompressed JSONL file is read by ``workers``
    processes, one part each; the rows come back in file order, so duplicates are marked exactly
    as one process marks them. :func:`stage_shard`, then :func:`commit_shard`.
    """
    context = ShardContext(shard, layout.relative_source(path), run_id, source_format, max_record_bytes)
    return commit_shard(layout, stage_shard(layout, Path(path), context, workers=workers))


@dataclass
class StagedShard:
    """A shard read into its staging files (in-shard duplicates marked), not yet in place."""

    stats: ShardStats
    samples: Path  # staging file of raw_pool
    quarantine: Path  # staging file of quarantine
    started: float  # time.time() when reading began (the shard's seconds run from it)
    marked_against: tuple | None  # the other shards' files (files_state; None: one vanished meanwhile) its duplicates were marked against


def stage_shard(
    layout: WarehouseLayout,
    path: Path,
    context: ShardContext,
    *,
    workers: int = 1,
    owner_pid: int | None = None,
    wait_for_earlier: Callable[[], object] = lambda: None,
) -> StagedShard:
    """Read ``path`` into staging files next to the shard's outputs: its samples and its quarantine.
    Reads no other shard, so shards are read in parallel; then, once ``wait_for_earlier`` returns
    (the shards committed before this one are in place), marks its duplicates, within the shard and
    of the other shards, and writes. Marked before the write, the file is written once: the commit
    marks again only if a shard was put in place meanwhile. The staging files carry ``owner_pid``
    (default: this process), the process that commits them."""
    started = time.time()
    shard = context.shard
    stats = ShardStats(
        shard=shard, source_file=context.source_file, file_sha256=file_sha256(path), file_bytes=path.stat().st_size, ingest_run_id=context.run_id
    )
    samples_out, quarantine_out = layout.shard_file("raw_pool", shard), layout.shard_file("quarantine", shard)
    owner = os.getpid() if owner_pid is None else owner_pid
    staging = samples_out.with_name(f".staging-{owner}.parquet")
    quarantine_staging = quarantine_out.with_name(f".staging-{owner}.parquet")
    for target in (staging, quarantine_staging):
        target.parent.mkdir(parents=True, exist_ok=True)
    for folder in (samples_out.parent, quarantine_out.parent, layout.shard_file("shard_stats", shard).parent):
        stats.stale_staging_removed += [str(p) for p in remove_stale_staging(folder)]

    # the staging file marks a write in progress
    samples_writer = pq.ParquetWriter(staging, SAMPLE_SCHEMA, compression="zstd", use_dictionary=SAMPLE_DICTIONARY)
    try:
        parts = _read_parts(path, context, workers)
        samples = _mark_in_shard_duplicates(pa.concat_tables(part.samples for part in parts), shard)
        stats.duplicates_in_shard = samples.num_rows - samples.column("duplicate_of").null_count
        wait_for_earlier()
        others = other_shard_files(layout, samples_out)
        samples, stats.duplicates_of_other_shards = _mark_cross_shard_duplicates(others, samples)
        marked_against = files_state(others)
        samples_writer.write_table(samples, row_group_size=BATCH_ROWS)
    finally:
        samples_writer.close()
    pq.write_table(pa.concat_tables(part.quarantine for part in parts), quarantine_staging, compression="zstd", row_group_size=BATCH_ROWS)
    for part in parts:
        stats.rows_read += part.rows_read
        stats.rows_quarantined += part.quarantine.num_rows
        stats.blank_lines += part.read_stats.blank_lines
        stats.container_errors += part.read_stats.container_errors
    stats.container = parts[0].read_stats.container
    stats.formats = dict(sum((part.formats for part in parts), Counter()))
    stats.quarantine_reasons = dict(sum((part.reasons for part in parts), Counter()))
    return StagedShard(stats, staging, quarantine_staging, started, marked_against)


def commit_shard(layout: WarehouseLayout, staged: StagedShard) -> ShardStats:
    """Check the accounting, move the staging files into place, write the stats (last: they mark a
    complete shard). The staged rows kept in another, already ingested shard are its duplicates (the
    first ingested shard wins): marked by :func:`stage_shard`, and here again only when the other
    shards' files are no longer those it marked against (the staging file is then rewritten if that
    marks more rows)."""
    stats = staged.stats
    samples_out = layout.shard_file("raw_pool", stats.shard)
    others = other_shard_files(layout, samples_out)
    if staged.marked_against is None or files_state(others) != staged.marked_against:
        ids = pq.read_table(staged.samples, columns=["sample_id", "duplicate_of"])
        marked, newly_marked = _mark_cross_shard_duplicates(others, ids)
        if newly_marked:
            samples = pq.read_table(staged.samples)
            samples = samples.set_column(SAMPLE_SCHEMA.get_field_index("duplicate_of"), "duplicate_of", marked.column("duplicate_of"))
            pq.write_table(samples, staged.samples, compression="zstd", row_group_size=BATCH_ROWS, use_dictionary=SAMPLE_DICTIONARY)
            stats.duplicates_of_other_shards += newly_marked
    stats.rows_kept = stats.rows_read - stats.rows_quarantined - stats.duplicates
    _check_accounting(stats, staged.samples, staged.quarantine)
    os.replace(staged.samples, samples_out)
    os.replace(staged.quarantine, layout.shard_file("quarantine", stats.shard))
    stats.seconds = time.time() - staged.started
    _write_stats(layout, stats)
    return stats


@dataclass(frozen=True)
class ShardContext:
    """What every row of a shard shares, and how its records are read."""

    shard: str
    source_file: str
    run_id: str
    source_format: str
    max_record_bytes: int


@dataclass
class PartRows:
    """The samples (``duplicate_of`` not set yet) and quarantined rows of one part of a shard file, in file order."""

    samples: pa.Table
    quarantine: pa.Table
    rows_read: int
    read_stats: ReadStats
    formats: Counter
    reasons: Counter


def _read_parts(path: Path, context: ShardContext, workers: int) -> list[PartRows]:
    """The shard's rows, in file order. An uncompressed JSONL file of at least PARALLEL_MIN_BYTES is
    cut into ``workers`` parts at line starts, read by as many processes; anything else in this one."""
    if workers < 2 or not is_splittable(path) or path.stat().st_size < PARALLEL_MIN_BYTES:
        return [read_part(path, None, context)]
    parts = jsonl_parts(path, workers)
    # fork: a worker needs only its arguments; it dies with this process (end_with_parent)
    with ProcessPoolExecutor(len(parts), mp_context=multiprocessing.get_context("fork"), initializer=end_with_parent, initargs=(os.getpid(),)) as pool:
        return list(pool.map(read_part, [path] * len(parts), parts, [context] * len(parts)))


def read_part(path: Path, part: JsonlPart | None, context: ShardContext) -> PartRows:
    """Read and canonicalize one part of a shard file (``None``: all of it), column by column, CHUNK_ROWS kept rows at a time."""
    with cyclic_gc_paused():
        read_stats = ReadStats()
        typed = context.source_format == "auto"  # a format given by hand: the general path reads it so
        records = (
            read_records(path, read_stats, context.max_record_bytes, typed=typed)
            if part is None
            else read_jsonl_part(path, part, read_stats, context.max_record_bytes, typed=typed)
        )
        columns, chunks = SampleColumns(), []
        quarantined: list[dict] = []
        formats: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        rows_read = 0
        for raw in records:
            rows_read += 1
            record = _canonical(raw, context.source_format)
            if isinstance(record, RecordError):
                reasons[record.reason.split(":")[0]] += 1
                quarantined.append(_quarantine_row(raw, record, context))
                continue
            formats[record.source_format] += 1
            columns.add(raw, record)
            if len(columns) == CHUNK_ROWS:
                chunks.append(columns.table(context))
                columns = SampleColumns()
        chunks.append(columns.table(context))
        samples, quarantine = pa.concat_tables(chunks), pa.Table.from_pylist(quarantined, schema=QUARANTINE_SCHEMA)
        del columns, chunks, quarantined  # freed before the collector resumes, so that its first collection finds them gone
    return PartRows(samples, quarantine, rows_read, read_stats, formats, reasons)


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (the previous state is restored on exit).

    Reading a shard allocates several container objects per record (parsed JSON, the kept tag
    and score lists) and holds the kept ones to the end, so each automatic collection traverses
    every row kept so far: about 30% of the reading time on a 93,900-row shard. The loop makes no
    reference cycles (reference counting frees everything it drops), so nothing waits for the
    collector; a cycle made elsewhere meanwhile is collected after the block."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _canonical(raw: RawRecord, source_format: str) -> CanonicalRecord | RecordError:
    if raw.canonical is not None:
        return raw.canonical
    if raw.error is not None:
        return raw.error
    try:
        return canonicalize(raw.value, source_format)
    except RecordError as exc:
        return exc


def _quarantine_row(raw: RawRecord, error: RecordError, context: ShardContext) -> dict:
    return {
        "shard": context.shard,
        "source_file": context.source_file,
        "line_no": raw.line_no,
        "field": error.field,
        "reason": f"{context.source_file}, line {raw.line_no}, field {error.field}: {error.reason}",
        "raw_text": raw.raw_text,
        "raw_bytes": raw.raw_bytes,
        "ingest_run_id": context.run_id,
    }


def _mark_in_shard_duplicates(samples: pa.Table, shard: str) -> pa.Table:
    """Set ``duplicate_of`` to 'shard:line' of the first row with the same sample_id (rows in file order)."""
    codes = samples.column("sample_id").combine_chunks().dictionary_encode().indices.to_numpy()
    _, first_row_of_code = np.unique(codes, return_index=True)  # np.unique returns each code's first index
    first_row = first_row_of_code[codes]
    repeated = first_row != np.arange(len(codes))
    if not repeated.any():
        return samples
    first_line = pc.take(samples.column("line_no"), pa.array(first_row))
    owner = pc.binary_join_element_wise(pa.scalar(shard), first_line.cast(pa.string()), ":")
    marked = pc.if_else(pa.array(repeated), owner, pa.scalar(None, pa.string()))
    return samples.set_column(SAMPLE_SCHEMA.get_field_index("duplicate_of"), "duplicate_of", marked)


def other_shard_files(layout: WarehouseLayout, own_output: Path) -> list[Path]:
    """The raw_pool files of the shards in place other than ``own_output``'s."""
    return [p for p in layout.shard_files("raw_pool") if p != own_output]


def files_state(paths: list[Path]) -> tuple | None:
    """What tells whether ``paths`` were replaced: each one's name, inode and modification time
    (a shard is put in place by a rename, which gives the name another inode); None if one is gone."""
    try:
        return tuple((str(p), st.st_ino, st.st_mtime_ns) for p in paths for st in [p.stat()])
    except FileNotFoundError:
        return None


def _mark_cross_shard_duplicates(others: list[Path], samples: pa.Table) -> tuple[pa.Table, int]:
    """Mark the rows not marked yet whose sample_id is kept in one of the shard files ``others``
    ('shard:line' of that copy, the least if several); returns the table and how many rows were marked."""
    if not others or samples.num_rows == 0:
        return samples, 0
    import duckdb

    # a small buffer: the join streams the other shards; only this shard's ids are held
    with duckdb.connect(config={"memory_limit": DUCKDB_MEMORY_LIMIT, "threads": 2}) as con:
        con.register("staged", samples.select(["sample_id", "duplicate_of"]))
        owners = con.sql(
            """
            SELECT o.sample_id, min(o.shard || ':' || o.line_no) AS owner
            FROM read_parquet($others) AS o
            WHERE o.duplicate_of IS NULL
              AND o.sample_id IN (SELECT sample_id FROM staged WHERE duplicate_of IS NULL)
            GROUP BY o.sample_id
            """,
            params={"others": [str(p) for p in others]},
        ).to_arrow_table()
    if owners.num_rows == 0:
        return samples, 0
    current = samples.column("duplicate_of")
    owner = pc.take(owners.column("owner"), pc.index_in(samples.column("sample_id"), value_set=owners.column("sample_id")))
    marked = pc.if_else(pc.is_null(current), owner, current)
    return samples.set_column(samples.schema.get_field_index("duplicate_of"), "duplicate_of", marked), owners.num_rows


def _check_accounting(stats: ShardStats, samples: Path, quarantine: Path) -> None:
    """Re-count what was actually written, not what the loop believes it wrote."""
    written = pq.ParquetFile(samples).metadata.num_rows
    quarantined = pq.ParquetFile(quarantine).metadata.num_rows
    if written != stats.rows_kept + stats.duplicates or quarantined != stats.rows_quarantined or stats.rows_kept < 0:
        raise AccountingError(
            f"{stats.source_file}: rows_read={stats.rows_read} but wrote {written} samples "
            f"(kept {stats.rows_kept} + duplicates {stats.duplicates}) and {quarantined} quarantined"
        )


def _write_stats(layout: WarehouseLayout, stats: ShardStats) -> None:
    import datetime as dt
    import json

    row = {name: getattr(stats, name) for name in STATS_SCHEMA.names if hasattr(stats, name)}
    row["formats"] = json.dumps(stats.formats, sort_keys=True)
    row["ingested_at"] = dt.datetime.now(dt.timezone.utc)
    write_parquet_atomic(pa.Table.from_pylist([row], schema=STATS_SCHEMA), layout.shard_file("shard_stats", stats.shard))
