"""How a range run does its per-shard work (orchestration/shard_runs.py)."""

import pyarrow as pa
import pytest

from mig_assets.orchestration import shard_runs


class CountingPool:
    """Arrow's default pool, counting release_unused calls."""

    def __init__(self, pool):
        self.pool, self.released = pool, 0

    def release_unused(self):
        self.released += 1
        self.pool.release_unused()


@pytest.mark.parametrize("threads", [1, 2])
def test_each_shard_runs_every_shard_in_order_then_gives_arrow_memory_back(monkeypatch, threads):
    pool = CountingPool(pa.default_memory_pool())
    monkeypatch.setattr(shard_runs.pa, "default_memory_pool", lambda: pool)
    allocated = pa.total_allocated_bytes()

    def work(shard: str) -> int:
        table = pa.table({"x": pa.array(range(200_000))})  # freed when the work returns
        return table.num_rows + len(shard)

    shards = [f"s{i}.jsonl" for i in range(5)]
    assert list(shard_runs.each_shard(work, shards, threads=threads).items()) == [(s, 200_000 + len(s)) for s in shards]
    assert pool.released == 1  # once, after the last shard: not per shard
    assert pa.total_allocated_bytes() <= allocated  # no table outlives its shard
