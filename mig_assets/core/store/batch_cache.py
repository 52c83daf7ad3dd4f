"""The append-only batch cache: the one mechanism behind the tag, quality and embedding caches.

Rows are keyed by a content hash (:func:`text_hash` of what the model read) and stored in Parquet
files ``batch-*.parquet`` under one folder per model (and prompt): each batch of work is written
atomically, as its own file, once it is done, so a crash loses at most the batch in flight, a
re-run finds every finished row, and appending never rewrites what is there. These folders hold
expensive model work: their names and schemas are part of the on-disk format.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pyarrow as pa

from mig_assets.core.store.parquet import write_parquet_atomic

# the caches' folders under the warehouse (renaming one would orphan the work it holds)
TAG_CACHE_DIR = "tag_cache"
QUALITY_CACHE_DIR = "quality_cache"
EMBEDDING_CACHE_DIR = "embedding_cache"
Item = TypeVar("Item")
Result = TypeVar("Result", list[dict], pa.Table)  # a batch's rows, or its table
BATCH_PREFIX = "batch-"  # every batch file's name starts so; readers glob f"{BATCH_PREFIX}*.parquet"


def text_hash(text: str) -> str:
    """SHA-256 (hex) of the UTF-8 text: the key of every cache row."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_folder(root: Path, model_id: str) -> Path:
    """``root/model=<id>``, a ``/`` in the id (``org/name``) made ``_``."""
    return Path(root) / f"model={model_id.replace('/', '_')}"


class BatchCache:
    """Rows keyed by ``key_column`` in append-only Parquet batch files under ``folder``.

    ``schema`` fixes the files' columns (``None``: read from the files, for columns whose type
    depends on the model, such as an embedding's dimension).
    """

    def __init__(self, folder: Path, key_column: str, schema: pa.Schema | None = None):
        self.folder, self.key_column, self.schema = Path(folder), key_column, schema

    def files(self) -> list[Path]:
        return sorted(self.folder.glob(f"{BATCH_PREFIX}*.parquet"))

    def read(self, keys: list[str]) -> pa.Table | None:
        """The cached rows of ``keys`` (those present), or None when the cache is empty."""
        files = self.files()
        if not files or not keys:
            return None
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        return ds.dataset(files, schema=self.schema).to_table(filter=pc.field(self.key_column).isin(keys))

    def lookup(self, keys: list[str]) -> dict[str, dict]:
        """key -> cached row, for the ``keys`` present."""
        table = self.read(keys)
        return {} if table is None else {row[self.key_column]: row for row in table.to_pylist()}

    def append(self, rows: list[dict] | pa.Table) -> Path | None:
        """Write ``rows`` as one new batch file (nothing when there are none)."""
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=self.schema) if rows else None
        if table is None or table.num_rows == 0:
            return None
        return write_parquet_atomic(table, self.folder / f"{BATCH_PREFIX}{time.time_ns()}-{os.getpid()}.parquet")

    def fill(
        self, todo: list[Item], batch_size: int, work: Callable[[list[Item]], Result], cacheable: Callable[[dict], bool] | None = None
    ) -> Iterator[tuple[list[Item], Result]]:
        """Run ``work`` over ``todo``, ``batch_size`` items at a time, appending each batch's result
        (rows or a table; of rows only those ``cacheable`` accepts) before yielding ``(batch, result)``."""
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            result = work(batch)
            self.append(result if cacheable is None else [row for row in result if cacheable(row)])
            yield batch, result
