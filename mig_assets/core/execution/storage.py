"""The warehouse as Ray's workers see it: a local path or a pyarrow filesystem URI (s3://, gs://,
hdfs://, file://), with atomic writes and the mirror copies around a run. No Dagster, no ray."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mig_assets.core.store.batch_cache import BATCH_PREFIX

PART_PREFIX = f"{BATCH_PREFIX}ray-"  # the cluster's cache batch files: read by every BatchCache, named by their contents


def open_uri(uri: str):
    """``(filesystem, path)`` for a local path or a URI pyarrow knows (file://, s3://, gs://, hdfs://)."""
    from pyarrow import fs

    if "://" not in uri:
        return fs.LocalFileSystem(), str(Path(uri).resolve())
    return fs.FileSystem.from_uri(uri)


def join_uri(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


def write_table_atomic(filesystem, path: str, table: pa.Table) -> None:
    """Write a Parquet file through a staging name and a move: readers never see half a file."""
    folder, name = path.rsplit("/", 1)
    filesystem.create_dir(folder, recursive=True)
    staging = f"{folder}/.staging-{uuid.uuid4().hex}-{name}"
    pq.write_table(table, staging, filesystem=filesystem, compression="zstd")
    filesystem.move(staging, path)


def exists(filesystem, path: str) -> bool:
    from pyarrow import fs

    return filesystem.get_file_info(path).type != fs.FileType.NotFound


@dataclass(frozen=True)
class Storage:
    """The local warehouse folder and the URI of the same warehouse for the workers.

    ``uri`` empty (or the same folder) means the workers read and write the local folder directly
    (one machine, or a shared mount at the same path). Otherwise it is a mirror: the shard's
    Parquet is copied up before the run and new cache files are copied back after it.
    """

    local_root: str
    uri: str = ""

    @property
    def root(self) -> str:
        return self.uri or self.local_root

    @property
    def remote(self) -> bool:
        if not self.uri:
            return False
        filesystem, path = open_uri(self.uri)
        from pyarrow import fs

        return not (isinstance(filesystem, fs.LocalFileSystem) and Path(path) == Path(self.local_root).resolve())

    def put(self, relative: str) -> None:
        """Copy one warehouse file to the workers' storage (a no-op when they share the folder)."""
        if not self.remote:
            return
        filesystem, root = open_uri(self.uri)
        table = pq.read_table(Path(self.local_root) / relative)
        write_table_atomic(filesystem, join_uri(root, relative), table)

    def fetch_parts(self, relative_folder: str) -> int:
        """Copy the workers' cache files of ``relative_folder`` that the local folder lacks; returns how many."""
        if not self.remote:
            return 0
        from pyarrow import fs

        filesystem, root = open_uri(self.uri)
        infos = filesystem.get_file_info(fs.FileSelector(join_uri(root, relative_folder), allow_not_found=True))
        local = Path(self.local_root) / relative_folder
        copied = 0
        for info in infos:
            if info.type != fs.FileType.File or not info.base_name.startswith(PART_PREFIX) or (local / info.base_name).exists():
                continue
            local.mkdir(parents=True, exist_ok=True)
            staging = local / f".staging-{os.getpid()}-{info.base_name}"
            with filesystem.open_input_stream(info.path) as source, open(staging, "wb") as target:
                while chunk := source.read(1 << 20):
                    target.write(chunk)
            os.replace(staging, local / info.base_name)
            copied += 1
        return copied
