"""``contamination``: per shard, the samples that overlap a registered benchmark (rows of
``core/curation/decontamination.py``), written to ``warehouse/contamination/shard=<key>/``.

The code version is the fingerprint of the benchmark files' bytes, the methods and the thresholds
(read from the settings when the definitions load): a change of the benchmark sets shows every
shard stale, and a new shard is checked alone (automation, or ``mig-assets decontaminate``).
"""

import time

import dagster as dg
import pyarrow.parquet as pq

from mig_assets.core.curation.decontamination import BenchmarkIndex, DecontaminationConfig, flagged_per_file
from mig_assets.core.curation.shard_check import (
    add_embedding_matches,
    check_raw_pool_file,
    check_shards_on_ray,
    with_provenance,
)
from mig_assets.core.embedding.encoder import EmbeddingCache
from mig_assets.core.store.parquet import write_parquet_atomic
from mig_assets.orchestration.automation import on_new_shard
from mig_assets.orchestration.partitions import pool_shards
from mig_assets.orchestration.provenance import record_settings
from mig_assets.resources import Embedder, Execution, Warehouse
from mig_assets.settings import Settings


def decontamination_config(settings: Settings) -> DecontaminationConfig:
    section = settings.decontamination
    return DecontaminationConfig(
        benchmarks=tuple(section.resolved_benchmarks(settings.home)),
        methods=tuple(section.methods),
        ngram=section.ngram,
        threshold=section.threshold,
        embedding_threshold=section.embedding_threshold,
    )


def build_contamination(config: DecontaminationConfig) -> dg.AssetsDefinition:
    """The contamination asset for one configuration (its code version is the config's fingerprint)."""
    uses_embeddings = "embedding" in config.methods
    deps = ["raw_pool", *(["sample_embeddings"] if uses_embeddings else [])]

    @dg.asset(
        name="contamination",
        partitions_def=pool_shards,
        deps=deps,
        group_name="curation",
        kinds={"parquet", "numpy"},
        code_version=config.fingerprint(),
        backfill_policy=dg.BackfillPolicy.single_run(),  # one benchmark index per run, however many shards
        # with no benchmark registered there is nothing to check: only a launched run makes the (empty) files
        automation_condition=on_new_shard if config.benchmarks else None,
        description="Samples of the shard overlapping a benchmark set (n-gram, exact, optionally embedding): "
        "view contamination (sample_id, benchmark_file, benchmark_line, method, score).",
    )
    def contamination(context: dg.AssetExecutionContext, warehouse: Warehouse, embedder: Embedder, execution: Execution) -> dg.MaterializeResult:
        record_settings(context)
        layout = warehouse.layout
        started = time.perf_counter()
        index = BenchmarkIndex.from_files(list(config.benchmarks), config.ngram)
        indexed = time.perf_counter()
        shards = list(context.partition_keys)
        if execution.on_ray:
            cluster = execution.connect(context.log.info)
            context.log.info(f"checking {len(shards)} shard(s) on Ray: {cluster}")
            relative = {s: layout.shard_file("raw_pool", s).relative_to(layout.warehouse_dir).as_posix() for s in shards}
            results = check_shards_on_ray(index, config, relative, execution.settings(layout).storage)
        else:
            results = {s: check_raw_pool_file(index, str(layout.shard_file("raw_pool", s)), config) for s in shards}
        unit_vectors = _benchmark_vectors(layout, embedder, index) if uses_embeddings and index.items else None
        checked = flagged_rows = 0
        per_file = dict.fromkeys(config.benchmarks, 0)
        for shard in shards:
            rows, n_checked = results[shard]
            if unit_vectors is not None:
                embeddings = pq.read_table(layout.shard_file("sample_embeddings", shard), columns=["sample_id", "embedding"])
                rows = add_embedding_matches(index, rows, embeddings, unit_vectors, config)
            write_parquet_atomic(with_provenance(rows, config, n_checked), layout.shard_file("contamination", shard))
            flagged = len(set(rows.column("sample_id").to_pylist()))
            context.log.info(f"{shard}: {n_checked:,} samples checked, {flagged:,} flagged")
            checked, flagged_rows = checked + n_checked, flagged_rows + flagged
            for file, count in flagged_per_file(rows, list(config.benchmarks)).items():
                per_file[file] = per_file.get(file, 0) + count
        if not config.benchmarks:
            context.log.warning("no benchmark files registered (decontamination.benchmarks): nothing can be flagged")
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": flagged_rows,
                "samples_checked": checked,
                "samples_flagged": flagged_rows,
                "flagged_per_benchmark": dg.MetadataValue.json(per_file),
                "benchmark_items": len(index.items),
                "decontamination": dg.MetadataValue.json(config.record()),
                "execution": "ray" if execution.on_ray else "local",
                "seconds_index": round(indexed - started, 3),
                "seconds_total": round(time.perf_counter() - started, 3),
                "shards_in_run": len(shards),
            }
        )

    return contamination


def _benchmark_vectors(layout, embedder: Embedder, index: BenchmarkIndex):
    """The benchmark items' unit vectors by the pool's embedding model, through the embedding cache."""
    model = embedder.get()
    cache = EmbeddingCache(layout.warehouse_dir / "embedding_cache", model.model_id)
    texts, _ = index.embedding_units()
    vectors, _ = cache.lookup(texts, model.encode)
    return vectors
