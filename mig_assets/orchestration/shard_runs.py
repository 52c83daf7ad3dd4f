"""Per-shard model work (``atomic_tags``, ``quality_scores``, ``sample_embeddings``): how such an
asset runs, and the metadata of a run over a range of shards (Dagster records one materialization
per shard of the range, each carrying the run's metadata)."""

from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pyarrow as pa

from mig_assets.orchestration.automation import on_new_shard
from mig_assets.orchestration.partitions import pool_shards

# one partition per shard of raw_pool, in the `gpu` pool (one model at a time), a range in one run
# (the model loads once), made as soon as its shard is ingested
SHARD_MODEL_WORK = {
    "partitions_def": pool_shards,
    "deps": ("raw_pool",),
    "pool": "gpu",
    "backfill_policy": dg.BackfillPolicy.single_run(),
    "automation_condition": on_new_shard,
}

# imported annotations are Arrow work (Parquet reads and writes, compute kernels: all release the
# GIL), so a range run does two shards at a time on this machine's two cores
IMPORTED_SHARD_THREADS = 2


def each_shard(work: Callable[[str], object], shards: Sequence[str], *, threads: int = 1) -> dict:
    """``work(shard)`` for each shard of a range run, in the range's order; ``threads`` shards at a
    time (only for work that releases the GIL and shares no state between shards).

    Afterwards Arrow's allocator gives back the memory the shards' tables freed (about 160 MB after
    the imported tags of 939,000 samples): a process that runs several runs one after another
    (``mig-assets run``, Dagster's in-process execution) would otherwise start the next from it."""
    if threads < 2 or len(shards) < 2:
        results = {shard: work(shard) for shard in shards}
    else:
        with ThreadPoolExecutor(min(threads, len(shards))) as pool:
            results = dict(zip(shards, pool.map(work, shards)))
    pa.default_memory_pool().release_unused()
    return results


def range_run_metadata(per_shard: dict[str, dict], *, summed: tuple[str, ...] = (), shared: tuple[str, ...] = ()) -> dict:
    """A one-shard run's own metadata; for a range, the combination: row counts and ``statuses``
    added up, a table of the shards, each ``summed`` figure added up (0 where a shard lacks it) and
    each ``shared`` entry (the same for every shard of the run) taken from the first shard."""
    if len(per_shard) == 1:
        return next(iter(per_shard.values()))
    rows = ["| shard | samples | statuses |", "|---|---|---|"]
    rows += [f"| {shard} | {m['dagster/row_count']} | {m['statuses'].value} |" for shard, m in per_shard.items()]
    statuses: Counter = Counter()
    for m in per_shard.values():
        statuses.update(m["statuses"].value)
    first = next(iter(per_shard.values()))
    return {
        "dagster/row_count": sum(m["dagster/row_count"] for m in per_shard.values()),
        **{key: first[key] for key in shared},
        "statuses": dg.MetadataValue.json(dict(statuses)),
        "shards_in_run": dg.MetadataValue.md("\n".join(rows)),
        **{key: sum(m.get(key, 0) for m in per_shard.values()) for key in summed},
    }
