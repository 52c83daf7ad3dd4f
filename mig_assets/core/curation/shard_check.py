"""One shard's contamination check, in the step (``local``) or as Ray tasks (``ray``): the same
function reads the shard's raw_pool Parquet and returns the same rows either way.

No Dagster import; ray is imported only by :func:`check_shards_on_ray`. The benchmark index is
put in Ray's object store once per run and shared by every task (one per shard).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mig_assets.core.curation.decontamination import (
    CONTAMINATION_SCHEMA,
    BenchmarkIndex,
    DecontaminationConfig,
    check_shard,
    embedding_matches,
    sort_rows,
)
from mig_assets.core.execution.storage import Storage, join_uri, open_uri

CONFIG_KEY = b"mig.decontamination"  # Parquet key-value metadata: the config record the rows were made with
CHECKED_KEY = b"mig.samples_checked"


def distinct_samples(table: pa.Table) -> pa.Table:
    """The first row of each sample_id (a shard's in-shard duplicates have the same text)."""
    rows = table.append_column("_row", pa.array(np.arange(table.num_rows)))
    first = rows.group_by("sample_id", use_threads=False).aggregate([("_row", "min")]).column("_row_min")
    return table.take(pc.sort_indices(first))


def check_raw_pool_table(index: BenchmarkIndex, table: pa.Table, config: DecontaminationConfig) -> tuple[pa.Table, int]:
    """Contamination rows of a raw_pool table (n-gram and exact methods) and the number of samples checked."""
    samples = distinct_samples(table.select(["sample_id", "messages"]))
    return check_shard(index, samples.column("sample_id"), samples.column("messages"), config), samples.num_rows


def check_raw_pool_file(index: BenchmarkIndex, path: str, config: DecontaminationConfig, filesystem=None) -> tuple[pa.Table, int]:
    return check_raw_pool_table(index, pq.read_table(path, columns=["sample_id", "messages"], filesystem=filesystem), config)


def add_embedding_matches(index: BenchmarkIndex, rows: pa.Table, embeddings: pa.Table, unit_vectors: np.ndarray, config: DecontaminationConfig) -> pa.Table:
    """``rows`` plus the embedding method's rows for a shard's sample embeddings (sample_id, embedding)."""
    from mig_assets.core.embedding.encoder import arrow_to_vectors

    vectors = arrow_to_vectors(embeddings.column("embedding")) if embeddings.num_rows else np.zeros((0, unit_vectors.shape[1]), np.float32)
    found = embedding_matches(index, embeddings.column("sample_id").to_pylist(), vectors, unit_vectors, config.embedding_threshold)
    return sort_rows(pa.concat_tables([rows, found]))


def with_provenance(rows: pa.Table, config: DecontaminationConfig, samples_checked: int) -> pa.Table:
    """``rows`` carrying the config record and the number of samples checked in its file's metadata."""
    return rows.cast(CONTAMINATION_SCHEMA).replace_schema_metadata({CONFIG_KEY: json.dumps(config.record(), sort_keys=True), CHECKED_KEY: str(samples_checked)})


def read_provenance(path: Path) -> tuple[dict, int]:
    """The config record and the number of samples checked of one contamination file."""
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata.get(CONFIG_KEY, b"{}")), int(metadata.get(CHECKED_KEY, b"0"))


def check_shards_on_ray(
    index: BenchmarkIndex, config: DecontaminationConfig, relative_files: dict[str, str], storage: Storage
) -> dict[str, tuple[pa.Table, int]]:
    """Each shard's n-gram and exact check as one Ray task over its raw_pool file (``relative_files``:
    shard -> path under the warehouse); the files are copied to the workers' storage first when it is remote."""
    import ray

    for relative in relative_files.values():
        storage.put(relative)

    @ray.remote
    def check(index_ref, root: str, relative: str):
        filesystem, base = open_uri(root)
        return check_raw_pool_file(index_ref, join_uri(base, relative), config, filesystem)

    index_ref = ray.put(index)
    refs = {shard: check.remote(index_ref, storage.root, relative) for shard, relative in relative_files.items()}
    return {shard: ray.get(ref) for shard, ref in refs.items()}


def summarize(contamination_files: dict[str, Path], benchmarks: list[str]) -> dict:
    """``samples_checked``, ``samples_flagged`` (distinct sample ids) and flagged samples per benchmark
    file over the shards' contamination files (``shard -> path``); shards without a file are listed."""
    checked, flagged, per_file, missing = 0, set(), {file: set() for file in benchmarks}, []
    for shard, path in sorted(contamination_files.items()):
        if not path.exists():
            missing.append(shard)
            continue
        _, n_checked = read_provenance(path)
        table = pq.read_table(path, columns=["sample_id", "benchmark_file"])
        checked += n_checked
        for sid, file in zip(table.column("sample_id").to_pylist(), table.column("benchmark_file").to_pylist()):
            flagged.add(sid)
            per_file.setdefault(file, set()).add(sid)
    return {
        "samples_checked": checked,
        "samples_flagged": len(flagged),
        "flagged_per_benchmark": {file: len(ids) for file, ids in per_file.items()},
        "shards_not_checked": missing,
    }
