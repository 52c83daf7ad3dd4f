"""Ingest one shard file into the warehouse: canonical samples, quarantine, duplicates, stats.

Accounting invariant, checked on every shard: ``rows_read = rows_kept + rows_quarantined +
duplicates``. A duplicate is a row whose ``sample_id`` was already kept, earlier in the same shard
or in another shard ingested before this one (the first ingested shard wins). Duplicate rows are
stored too (with ``duplicate_of``), so a later change to the winning shard can never lose them.

Memory is bounded by the shard, not the pool: rows are written in batches, and the cross-shard
lookup joins this shard's ids against the other shards' Parquet inside DuckDB.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mig_assets.core.ingest.readers import (
    DEFAULT_MAX_RECORD_BYTES,
    RawRecord,
    ReadStats,
    read_records,
)
from mig_assets.core.ingest.records import RecordError, canonicalize
from mig_assets.core.store.catalog import WarehouseLayout
from mig_assets.core.store.parquet import remove_stale_staging, write_parquet_atomic

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
SAMPLE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("shard", pa.string()),
        ("line_no", pa.int64()),
        ("source_file", pa.string()),
        ("source_format", pa.string()),
        ("messages", pa.list_(MESSAGE_TYPE)),
        ("n_turns", pa.int32()),
        ("n_chars", pa.int64()),
        ("n_tokens_est", pa.int64()),
        ("source", pa.string()),
        ("original_id", pa.string()),
        ("imported_tags", pa.list_(pa.string())),
        ("imported_quality", pa.float64()),
        ("raw", pa.string()),
        ("duplicate_of", pa.string()),
        ("ingest_run_id", pa.string()),
    ]
)
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
BATCH_ROWS = 5000
DUCKDB_MEMORY_LIMIT = "512MB"


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
) -> ShardStats:
    """Read ``path`` and (re)write the shard's samples, quarantine and stats Parquet files.

    Outputs replace the previous version of the shard atomically; stats are written last, so
    their presence marks a complete shard.
    """
    started = time.perf_counter()
    path = Path(path)
    stats = ShardStats(
        shard=shard,
        source_file=layout.relative_source(path),
        file_sha256=file_sha256(path),
        file_bytes=path.stat().st_size,
        ingest_run_id=run_id,
    )
    samples_out = layout.shard_file("raw_pool", shard)
    quarantine_out = layout.shard_file("quarantine", shard)
    staging = samples_out.with_name(f".staging-{os.getpid()}.parquet")
    quarantine_staging = quarantine_out.with_name(f".staging-{os.getpid()}.parquet")
    for target in (staging, quarantine_staging):
        target.parent.mkdir(parents=True, exist_ok=True)
    for folder in (samples_out.parent, quarantine_out.parent, layout.shard_file("shard_stats", shard).parent):
        stats.stale_staging_removed += [str(p) for p in remove_stale_staging(folder)]

    read_stats = ReadStats()
    formats: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    first_line_of: dict[str, int] = {}
    samples = _BatchWriter(staging, SAMPLE_SCHEMA)
    quarantine = _BatchWriter(quarantine_staging, QUARANTINE_SCHEMA)
    try:
        for raw in read_records(path, read_stats, max_record_bytes):
            stats.rows_read += 1
            row = _sample_row(raw, shard, stats.source_file, run_id, source_format)
            if isinstance(row, RecordError):
                stats.rows_quarantined += 1
                reasons[row.reason.split(":")[0]] += 1
                quarantine.add(_quarantine_row(raw, row, shard, stats.source_file, run_id))
                continue
            formats[row["source_format"]] += 1
            first = first_line_of.setdefault(row["sample_id"], raw.line_no)
            if first != raw.line_no:
                row["duplicate_of"] = f"{shard}:{first}"
                stats.duplicates_in_shard += 1
            samples.add(row)
    finally:
        samples.close()
        quarantine.close()

    owners = _owners_in_other_shards(layout, shard, staging, samples_out)
    if owners:
        _mark_cross_shard_duplicates(staging, owners)
    stats.duplicates_of_other_shards = len(owners)
    stats.rows_kept = stats.rows_read - stats.rows_quarantined - stats.duplicates
    stats.container = read_stats.container
    stats.blank_lines = read_stats.blank_lines
    stats.container_errors = read_stats.container_errors
    stats.formats = dict(formats)
    stats.quarantine_reasons = dict(reasons)
    _check_accounting(stats, staging, quarantine_staging)

    os.replace(staging, samples_out)
    os.replace(quarantine_staging, quarantine_out)
    stats.seconds = time.perf_counter() - started
    _write_stats(layout, stats)
    return stats


def _sample_row(raw: RawRecord, shard: str, source_file: str, run_id: str, source_format: str) -> dict | RecordError:
    if raw.error is not None:
        return raw.error
    try:
        record = canonicalize(raw.value, source_format)
    except RecordError as exc:
        return exc
    return {
        "sample_id": record.sample_id,
        "shard": shard,
        "line_no": raw.line_no,
        "source_file": source_file,
        "source_format": record.source_format,
        "messages": [{"role": role, "content": content} for role, content in record.messages],
        "n_turns": len(record.messages),
        "n_chars": record.n_chars,
        "n_tokens_est": record.n_tokens_est,
        "source": record.source,
        "original_id": record.original_id,
        "imported_tags": record.imported_tags,
        "imported_quality": record.imported_quality,
        "raw": raw.raw_text,
        "duplicate_of": None,
        "ingest_run_id": run_id,
    }


def _quarantine_row(raw: RawRecord, error: RecordError, shard: str, source_file: str, run_id: str) -> dict:
    return {
        "shard": shard,
        "source_file": source_file,
        "line_no": raw.line_no,
        "field": error.field,
        "reason": f"{source_file}, line {raw.line_no}, field {error.field}: {error.reason}",
        "raw_text": raw.raw_text,
        "raw_bytes": raw.raw_bytes,
        "ingest_run_id": run_id,
    }


class _BatchWriter:
    """Buffers rows and appends them to one Parquet file in row groups of BATCH_ROWS."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path, self.schema, self.rows = path, schema, []
        self.writer = pq.ParquetWriter(path, schema, compression="zstd")

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _owners_in_other_shards(layout: WarehouseLayout, shard: str, staging: Path, own_output: Path) -> dict[str, str]:
    """sample_id -> 'shard:line' of the kept copy in another, already ingested shard."""
    others = [p for p in layout.shard_files("raw_pool") if p != own_output]
    if not others:
        return {}
    import duckdb

    # a small buffer: the join streams the other shards; only this shard's ids are held
    with duckdb.connect(config={"memory_limit": DUCKDB_MEMORY_LIMIT, "threads": 2}) as con:
        rows = con.execute(
            """
            SELECT o.sample_id, min(o.shard || ':' || o.line_no)
            FROM read_parquet($others) AS o
            WHERE o.duplicate_of IS NULL
              AND o.sample_id IN (SELECT sample_id FROM read_parquet($staging) WHERE duplicate_of IS NULL)
            GROUP BY o.sample_id
            """,
            {"others": [str(p) for p in others], "staging": str(staging)},
        ).fetchall()
    return dict(rows)


def _mark_cross_shard_duplicates(staging: Path, owners: dict[str, str]) -> None:
    """Rewrite the staging file batch by batch, setting duplicate_of from ``owners``."""
    marked_path = staging.with_name(staging.name + ".marked")
    source = pq.ParquetFile(staging)
    with pq.ParquetWriter(marked_path, SAMPLE_SCHEMA, compression="zstd") as writer:
        for batch in source.iter_batches(batch_size=BATCH_ROWS):
            table = pa.Table.from_batches([batch], schema=SAMPLE_SCHEMA)
            ids = table.column("sample_id").to_pylist()
            current = table.column("duplicate_of").to_pylist()
            marked = pa.array([owners.get(i) if d is None else d for i, d in zip(ids, current)], pa.string())
            writer.write_table(table.set_column(SAMPLE_SCHEMA.get_field_index("duplicate_of"), "duplicate_of", marked))
    os.replace(marked_path, staging)


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
