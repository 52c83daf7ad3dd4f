"""Ingest a range of shards in one step: read in parallel processes, put in place in order.

Reading a shard (parsing, canonicalizing: :func:`~mig_assets.core.ingest.shards.stage_shard`)
looks at no other shard, so ``workers`` processes read one shard each. A worker then waits until
the range's shards before its own are in place, marks the rows they (or any shard ingested
earlier) already keep as their duplicates and writes its staging files: once, with the marks.
Committing a shard (moving the files into place, writing its stats:
:func:`~mig_assets.core.ingest.shards.commit_shard`) is done by the calling process alone, one
shard at a time in the range's order, while the workers read the next shards. So "the first
ingested shard wins" means the first in the range's order (the partitions' registration order),
exactly as one run per shard in that order, and there is still a single writer of the warehouse.
Memory is bounded by a shard per worker: a worker sends back only the shard's figures.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from mig_assets.core.ingest.parts import end_with_parent
from mig_assets.core.ingest.readers import DEFAULT_MAX_RECORD_BYTES
from mig_assets.core.ingest.shards import DEFAULT_WORKERS, ShardContext, ShardStats, StagedShard, commit_shard, cyclic_gc_paused, stage_shard
from mig_assets.core.store.layout import WarehouseLayout


def ingest_shard_range(
    layout: WarehouseLayout,
    shards: Sequence[tuple[str, Path]],
    *,
    run_id: str = "",
    source_format: str = "auto",
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    workers: int = DEFAULT_WORKERS,
    on_commit: Callable[[ShardStats], None] = lambda stats: None,
) -> list[ShardStats]:
    """Ingest each ``(shard key, file)`` of ``shards``, committed in that order; returns their stats.

    One shard alone is read by ``workers`` processes (its parts); a range, by ``workers`` processes
    reading one shard each. ``on_commit`` is called with each shard's stats as it is put in place.
    """
    contexts = [(Path(path), ShardContext(shard, layout.relative_source(path), run_id, source_format, max_record_bytes)) for shard, path in shards]
    if len(contexts) < 2 or workers < 2:
        staged_one_by_one = (stage_shard(layout, path, context, workers=workers) for path, context in contexts)
        return [_commit(layout, staged, on_commit) for staged in staged_one_by_one]
    # fork: a worker needs nothing but its arguments and the events, which it inherits, and starts at once
    fork = multiprocessing.get_context("fork")
    parent, committed = os.getpid(), [fork.Event() for _ in contexts]  # the i-th is set once shard i is in place
    with ProcessPoolExecutor(min(workers, len(contexts)), mp_context=fork, initializer=start_worker, initargs=(parent, committed)) as pool:
        futures = [pool.submit(stage_in_worker, layout, path, context, parent, i) for i, (path, context) in enumerate(contexts)]
        try:
            done = []
            for i, future in enumerate(futures):
                done.append(_commit(layout, future.result(), on_commit))
                committed[i].set()
            return done
        except BaseException:
            for future in futures:
                future.cancel()
            for event in committed:  # a worker waiting for a shard that will not be put in place goes on, so the pool can shut down
                event.set()
            raise


_committed: list = []  # in a worker: the range's events, inherited from the parent (start_worker)


def start_worker(parent_pid: int, committed: list) -> None:
    """Initializer of a range's worker: it ends with the parent (:func:`~mig_assets.core.ingest.parts.end_with_parent`)
    and keeps the events that say which shards are in place."""
    end_with_parent(parent_pid)
    _committed[:] = committed


def stage_in_worker(layout: WarehouseLayout, path: Path, context: ShardContext, owner_pid: int, index: int) -> StagedShard:
    """:func:`stage_shard` of the range's shard ``index`` in a worker process, marking its duplicates
    once the shard before it is in place (and so every earlier one: they are committed in order).
    Python's cyclic garbage collector is off: the read makes millions of small objects and no cycles,
    and collecting them cost about 14% of its time. The worker does nothing else, so no other code
    runs without the collector. (:func:`~mig_assets.core.ingest.shards.read_part` pauses it too,
    wherever a shard is read; here it stays off for the whole staging.)"""
    earlier = _committed[index - 1].wait if index else (lambda: None)
    with cyclic_gc_paused():
        return stage_shard(layout, path, context, workers=1, owner_pid=owner_pid, wait_for_earlier=earlier)


def _commit(layout: WarehouseLayout, staged: StagedShard, on_commit: Callable[[ShardStats], None]) -> ShardStats:
    stats = commit_shard(layout, staged)
    on_commit(stats)
    return stats
