"""Small I/O helpers shared by the warehouse writers."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mig_assets.core.store.layout import IMPORTED_MARKER, WarehouseLayout


def write_parquet_atomic(table: pa.Table, path: Path, use_dictionary: bool | list[str] = True) -> Path:
    """Write ``table`` to ``path`` through a staging file and a rename: readers never see half a file.
    ``use_dictionary``: as Parquet's writer takes it (:func:`dictionary_columns`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".staging-{os.getpid()}-{path.name}")
    pq.write_table(table, staging, compression="zstd", use_dictionary=use_dictionary)
    os.replace(staging, path)
    return path


def write_text_atomic(text: str, path: Path) -> Path:
    """Write ``text`` to ``path`` as :func:`write_parquet_atomic` writes a table (staging file, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".staging-{os.getpid()}-{path.name}")
    staging.write_text(text)
    os.replace(staging, path)
    return path


def write_shard_rows(layout: WarehouseLayout, asset: str, shard: str, table: pa.Table) -> Path:
    """``shard``'s rows of ``asset`` as its file, then no imported marker (the file took precedence once written)."""
    path = write_parquet_atomic(table, layout.shard_file(asset, shard))
    path.with_name(IMPORTED_MARKER).unlink(missing_ok=True)
    return path


def write_imported_marker(layout: WarehouseLayout, asset: str, shard: str, facts: dict) -> Path:
    """Make ``shard``'s rows of ``asset`` the pool's own annotations, derived from its kept raw_pool
    rows where they are (:data:`~mig_assets.core.store.layout.IMPORTED_ROWS`): the marker, saying
    what the rows are (``facts``, with the raw_pool file), then no file of rows of its own (rows another
    backend made stay in their cache)."""
    raw_pool = layout.shard_file("raw_pool", shard).relative_to(layout.warehouse_dir).as_posix()
    text = json.dumps({"rows": f"derived in place from the kept rows of {raw_pool}", "raw_pool_file": raw_pool, **facts}, indent=2) + "\n"
    marker = write_text_atomic(text, layout.shard_file(asset, shard).with_name(IMPORTED_MARKER))
    layout.shard_file(asset, shard).unlink(missing_ok=True)  # after the marker: a reader never finds neither
    return marker


def dictionary_columns(schema: pa.Schema, distinct: Iterable[str]) -> list[str]:
    """The Parquet leaf columns of ``schema`` (``tags.list.element``, ``messages.list.element.role``)
    but those under ``distinct`` (fields or leaves): the ``use_dictionary`` of a writer, for tables
    where those columns hold a different value on (nearly) every row. Parquet's writer builds a
    dictionary page for every column until it outgrows 1 MB, then writes plain pages: for a column
    of ids or raw records that dictionary is pure cost (about 15% of a shard's write; its pages
    read back slower)."""

    def leaves(name: str, kind: pa.DataType) -> list[str]:
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            return leaves(f"{name}.list.element", kind.value_type)
        if pa.types.is_struct(kind):
            return [leaf for child in kind for leaf in leaves(f"{name}.{child.name}", child.type)]
        return [name]

    skipped = tuple(distinct)
    every = [leaf for field in schema for leaf in leaves(field.name, field.type)]
    return [leaf for leaf in every if not any(leaf == name or leaf.startswith(f"{name}.") for name in skipped)]


def write_rows_atomic(
    table: pa.Table, rows: pa.Array, path: Path, batch_rows: int = 131072, schema: pa.Schema | None = None, use_dictionary: bool | list[str] = True
) -> Path:
    """Write ``table``'s ``rows`` (indices, in that order) to ``path`` as :func:`write_parquet_atomic`
    does, ``batch_rows`` at a time, each batch cast to ``schema`` (default: the table's): only one
    batch of the reordered rows is ever in memory. ``use_dictionary``: as Parquet's writer takes it
    (:func:`dictionary_columns`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".staging-{os.getpid()}-{path.name}")
    schema = table.schema if schema is None else schema
    with pq.ParquetWriter(staging, schema, compression="zstd", use_dictionary=use_dictionary) as writer:
        for start in range(0, len(rows), batch_rows):
            writer.write_table(table.take(rows.slice(start, batch_rows)).cast(schema), row_group_size=batch_rows)
    os.replace(staging, path)
    return path


_STAGING_PID = re.compile(r"^\.staging-(\d+)")


def remove_stale_staging(folder: Path) -> list[Path]:
    """Delete staging files (``.staging-<pid>...``) in ``folder`` left by a crashed writer.

    A file is stale when its writer's pid is this process (an earlier, failed attempt) or no longer
    runs; a live writer's file is left alone. Returns the files removed.
    """
    removed = []
    for path in sorted(Path(folder).glob(".staging-*")):
        match = _STAGING_PID.match(path.name)
        if match and path.is_file() and not _other_live_process(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _other_live_process(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_kept_rows(path: Path, columns: list[str]) -> pa.Table:
    """The kept rows of a ``raw_pool`` shard file (``duplicate_of`` NULL: the first copy of each
    sample), with ``columns`` and ``duplicate_of``."""
    import pyarrow.compute as pc

    table = pq.read_table(path, columns=[*columns, "duplicate_of"])
    if table.column("duplicate_of").null_count == table.num_rows:  # no duplicates: no copy of every column
        return table
    return table.filter(pc.is_null(table.column("duplicate_of")))
