"""Small I/O helpers shared by the warehouse writers."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    """Write ``table`` to ``path`` through a staging file and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".staging-{os.getpid()}-{path.name}")
    pq.write_table(table, staging, compression="zstd")
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


class BatchFileCache:
    """Result rows keyed by ``key_column`` in append-only Parquet batch files under ``folder``.

    Each batch is written atomically once its work is done, so a crash loses at most the batch in
    flight and a re-run finds every finished row. Subclasses set ``schema`` and ``key_column``.
    """

    schema: pa.Schema
    key_column: str

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def lookup(self, keys: list[str]) -> dict[str, dict]:
        files = sorted(self.folder.glob("batch-*.parquet"))
        if not files or not keys:
            return {}
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        table = ds.dataset(files, schema=self.schema).to_table(filter=pc.field(self.key_column).isin(keys))
        return {row[self.key_column]: row for row in table.to_pylist()}

    def append(self, rows: list[dict]) -> Path | None:
        if not rows:
            return None
        name = f"batch-{time.time_ns()}-{os.getpid()}.parquet"
        return write_parquet_atomic(pa.Table.from_pylist(rows, schema=self.schema), self.folder / name)
