"""``tag_embeddings``: one vector per canonical tag, cached by (tag text, model)."""

import time
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
from pydantic import Field

from mig_assets.core.embedding.encoder import DEFAULT_EMBEDDING_MODEL, EmbeddingCache, vectors_to_arrow
from mig_assets.core.execution.pipeline import NoLocalModel
from mig_assets.core.mig.sample import load_label_embeddings
from mig_assets.core.selection.inputs import tag_policies
from mig_assets.core.store.batch_cache import EMBEDDING_CACHE_DIR, text_hash
from mig_assets.core.store.parquet import read_kept_rows, write_parquet_atomic
from mig_assets.core.tagging.canonical import normalize_tag
from mig_assets.core.tagging.rows import kept_text_hashes, query_text
from mig_assets.orchestration.automation import (
    re_select,
    refuse_to_replace_other_configuration,
)
from mig_assets.orchestration.column_lineage import column_lineage
from mig_assets.orchestration.provenance import record_settings
from mig_assets.orchestration.shard_runs import SHARD_MODEL_WORK
from mig_assets.resources import Embedder, Execution, Warehouse
from mig_assets.settings import current_settings

# the embedding model is part of what the vectors depend on: read when the definitions load
EMBEDDING_CODE_VERSION = f"1-{current_settings().values['embedder']['model'] or DEFAULT_EMBEDDING_MODEL}"
SAMPLE_EMBEDDING_SCHEMA_COLUMNS = ("sample_id", "model_id", "embedding")


class TagEmbeddingConfig(dg.Config):
    label_embeddings_prefix: str = Field(
        default="",
        description="PREFIX.labels.json + PREFIX.emb.npy: precomputed label vectors to use instead of the model",
    )


def precomputed_rows(names: list[str], tags: list[str], normalized: bool = True) -> dict[str, int]:
    """Row of each of ``tags`` in a precomputed label file (a tag it has no row for left out): the
    first row of its name as written; for ``normalized`` tags (LLM tags: the pool has the
    ``normalized`` tag policy), else the first row whose name normalizes to it. Imported tags keep
    their spelling and are looked up as written only, as the MIG reference does. The names are
    normalized only when a normalized tag is not in the file as written: the lemmatizer's
    dictionary takes a quarter of a second to load."""
    as_written = {name: row for row, name in reversed(list(enumerate(names)))}
    normalized_rows: dict[str, int] = {}
    if normalized and any(tag not in as_written for tag in tags):
        for row, name in enumerate(names):
            normalized_rows.setdefault(normalize_tag(name) or name, row)
    rows = {}
    for tag in tags:
        row = as_written.get(tag, normalized_rows.get(tag))
        if row is not None:
            rows[tag] = row
    return rows


@dg.asset(
    deps=["tag_vocabulary"],
    group_name="embeddings",
    kinds={"parquet", "pytorch"},
    code_version=EMBEDDING_CODE_VERSION,
    pool="duckdb",
    automation_condition=re_select,
    description="A unit-norm vector per canonical tag (sentence-transformers, or precomputed), cached by tag text and model.",
)
def tag_embeddings(context: dg.AssetExecutionContext, config: TagEmbeddingConfig, warehouse: Warehouse, embedder: Embedder) -> dg.MaterializeResult:
    record_settings(context)
    layout = warehouse.layout
    with warehouse.connect() as con:
        tags = [tag for (tag,) in con.execute("SELECT tag FROM tag_vocabulary ORDER BY tag").fetchall()]
        normalized = "normalized" in tag_policies(con)
    started = time.perf_counter()
    without_vector: list[str] = []
    if config.label_embeddings_prefix:
        names, matrix = load_label_embeddings(config.label_embeddings_prefix)
        row_of = precomputed_rows(names, tags, normalized)
        # tags the file has no vector for are left out here; label_graph fails if it needs one
        without_vector = [t for t in tags if t not in row_of]
        tags = [t for t in tags if t in row_of]
        vectors = np.asarray(matrix[[row_of[t] for t in tags]], dtype=np.float32)
        model_id, newly_embedded, device = f"precomputed:{Path(config.label_embeddings_prefix).name}", 0, "none"
    else:
        model = embedder.get()
        cache = EmbeddingCache(layout.warehouse_dir / EMBEDDING_CACHE_DIR, model.model_id)
        vectors, newly_embedded = cache.lookup(tags, model.encode)
        model_id, device = model.model_id, model.device
    seconds = time.perf_counter() - started
    if not tags:
        vectors = np.zeros((0, 1), dtype=np.float32)
    table = pa.table({"tag": tags, "model_id": [model_id] * len(tags), "embedding": vectors_to_arrow(vectors)})
    path = write_parquet_atomic(table, layout.tag_embeddings_file)
    context.log.info(f"{len(tags):,} tags, {newly_embedded:,} newly embedded with {model_id} on {device} in {seconds:.1f}s")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(tags),
            "dagster/column_lineage": column_lineage({"tag": [("tag_vocabulary", "tag")], "embedding": [("tag_vocabulary", "tag")]}),
            "newly_embedded": newly_embedded,
            "reused_from_cache": len(tags) - newly_embedded,
            "model": model_id,
            "device": device,
            "dimension": int(vectors.shape[1]),
            "seconds": round(seconds, 2),
            "tags_without_vector": len(without_vector),
            "tags_without_vector_examples": dg.MetadataValue.json(without_vector[:20]),
            "path": dg.MetadataValue.path(str(path)),
        },
        data_version=dg.DataVersion(text_hash("\n".join([model_id, *tags]))[:16]),
    )


@dg.asset(
    **SHARD_MODEL_WORK,
    group_name="embeddings",
    kinds={"parquet", "pytorch"},
    code_version=EMBEDDING_CODE_VERSION,
    description="A unit-norm vector per kept sample of the shard (its user turns), cached by text and model; feeds baselines, grounding and diagnostics.",
)
def sample_embeddings(context: dg.AssetExecutionContext, warehouse: Warehouse, embedder: Embedder, execution: Execution) -> dg.MaterializeResult:
    record_settings(context)
    refuse_to_replace_other_configuration(context)
    layout = warehouse.layout
    model = embedder.get()
    cache = EmbeddingCache(layout.warehouse_dir / EMBEDDING_CACHE_DIR, model.model_id)
    totals = {"rows": 0, "newly_embedded": 0, "seconds": 0.0}
    figures, cluster_extra = _embed_on_ray(context, layout, embedder, execution, cache) if execution.on_ray else ({}, {})
    dimension = 0
    for shard in context.partition_keys:
        started = time.perf_counter()
        kept = read_kept_rows(layout.shard_file("raw_pool", shard), ["sample_id", "messages"])
        texts = [query_text(m) for m in kept.column("messages").to_pylist()]
        if shard in figures:  # embedded on the cluster: assembled from the cache, nothing left to encode here
            vectors, _ = cache.lookup(texts, NoLocalModel().encode)
            new = figures[shard].tagged
        else:
            vectors, new = cache.lookup(texts, model.encode)
        if len(texts) == 0:
            vectors = np.zeros((0, model.dimension), dtype=np.float32)
        dimension = int(vectors.shape[1])
        out = pa.table({"sample_id": kept.column("sample_id"), "model_id": [model.model_id] * len(texts), "embedding": vectors_to_arrow(vectors)})
        write_parquet_atomic(out, layout.shard_file("sample_embeddings", shard))
        seconds = time.perf_counter() - started + (figures[shard].seconds if shard in figures else 0.0)
        context.log.info(f"{shard}: {len(texts):,} samples, {new:,} newly embedded in {seconds:.1f}s on {model.device}")
        totals["rows"] += len(texts)
        totals["newly_embedded"] += new
        totals["seconds"] += seconds
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": totals["rows"],
            "dagster/column_lineage": column_lineage({"sample_id": [("raw_pool", "sample_id")], "embedding": [("raw_pool", "messages")]}),
            "newly_embedded": totals["newly_embedded"],
            "reused_from_cache": totals["rows"] - totals["newly_embedded"],
            "texts_per_second": round(totals["newly_embedded"] / totals["seconds"], 1) if totals["seconds"] else 0.0,
            "model": model.model_id,
            "device": model.device,
            "dimension": dimension,
            "shards_in_run": len(context.partition_keys),
            **cluster_extra,
        }
    )


def _embed_on_ray(context, layout, embedder: Embedder, execution: Execution, cache: EmbeddingCache):
    """The run's missing texts, all shards at once, embedded on the Ray cluster into the embedding
    cache; returns each shard's figures and the cluster metadata."""
    from mig_assets.core.execution.pipeline import embed_shards_on_ray

    cluster_name = execution.connect(context.log.info)
    context.log.info(f"embedding {len(context.partition_keys)} shard(s) on Ray: {cluster_name}")
    figures, cluster = embed_shards_on_ray(
        kept_text_hashes(layout, context.partition_keys),
        cache,
        model=embedder.model,
        device="auto" if execution.gpus_per_actor else "cpu",
        encode_batch_size=embedder.batch_size,
        settings=execution.settings(layout),
        log=context.log.info,
    )
    device = "cuda" if execution.gpus_per_actor else "cpu"
    return figures, {"device": device, **execution.cluster_metadata(cluster, cluster_name)}
