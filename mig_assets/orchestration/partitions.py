"""Partitions: one dynamic partition per shard file in the pool."""

import dagster as dg

pool_shards = dg.DynamicPartitionsDefinition(name="pool_shards")
