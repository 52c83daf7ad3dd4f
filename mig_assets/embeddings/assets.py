"""``tag_embeddings``: one vector per canonical tag, cached by (tag text, model)."""

import time
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
from pydantic import Field

from mig_assets.core.embedding import EmbeddingCache, text_hash, vectors_to_arrow
from mig_assets.core.io import write_parquet_atomic
from mig_assets.core.mig import embedding_lookup
from mig_assets.core.mig_sample import load_label_embeddings
from mig_assets.core.tags import normalize_tag
from mig_assets.resources import Embedder, Warehouse
from mig_assets.tagging.assets import tag_vocabulary

TAG_EMBEDDINGS_FILE = ("tag_embeddings", "part-0.parquet")


class TagEmbeddingConfig(dg.Config):
    label_embeddings_prefix: str = Field(
        default="",
        description="PREFIX.labels.json + PREFIX.emb.npy: precomputed label vectors to use instead of the model",
    )


def tag_embeddings_path(warehouse_dir: Path) -> Path:
    return warehouse_dir.joinpath(*TAG_EMBEDDINGS_FILE)


@dg.asset(
    deps=[tag_vocabulary],
    group_name="embeddings",
    kinds={"parquet", "pytorch"},
    code_version="1",
    pool="duckdb",
    description="A unit-norm vector per canonical tag (sentence-transformers, or precomputed), cached by tag text and model.",
)
def tag_embeddings(
    context: dg.AssetExecutionContext, config: TagEmbeddingConfig, warehouse: Warehouse, embedder: Embedder
) -> dg.MaterializeResult:
    layout = warehouse.layout
    with warehouse.connect() as con:
        tags = [tag for (tag,) in con.execute("SELECT tag FROM tag_vocabulary ORDER BY tag").fetchall()]
    started = time.perf_counter()
    without_vector: list[str] = []
    if config.label_embeddings_prefix:
        names, matrix = load_label_embeddings(config.label_embeddings_prefix)
        canonical_names = [normalize_tag(n) or n for n in names]
        known = set(canonical_names)
        # tags the file has no vector for are left out here; label_graph fails if it needs one
        without_vector = [t for t in tags if t not in known]
        tags = [t for t in tags if t in known]
        vectors = embedding_lookup(canonical_names, matrix)(tags)
        model_id, newly_embedded, device = f"precomputed:{Path(config.label_embeddings_prefix).name}", 0, "none"
    else:
        model = embedder.get()
        cache = EmbeddingCache(layout.warehouse_dir / "embedding_cache" / "tags", model.model_id)
        vectors, newly_embedded = cache.lookup(tags, model.encode)
        model_id, device = model.model_id, model.device
    seconds = time.perf_counter() - started
    if not tags:
        vectors = np.zeros((0, 1), dtype=np.float32)
    table = pa.table({"tag": tags, "model_id": [model_id] * len(tags), "embedding": vectors_to_arrow(vectors)})
    path = write_parquet_atomic(table, tag_embeddings_path(layout.warehouse_dir))
    context.log.info(f"{len(tags):,} tags, {newly_embedded:,} newly embedded with {model_id} on {device} in {seconds:.1f}s")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(tags),
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
