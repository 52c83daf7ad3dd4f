"""One pass of ``near_duplicates`` over the pool, per method: bring the per-shard state up to date
(signatures of new or changed shards, their pairs with the whole pool) and cluster every live pair.

Where the per-shard work runs is a parameter: ``sign`` (stale shards -> their signature tables)
and ``search`` (faiss index, query vectors, threshold -> raw hits) are the local functions, or the
Ray ones of :mod:`mig_assets.core.curation.near_duplicates_ray`; the outputs are the same.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from mig_assets.core.curation.near_duplicate_state import (
    PairsOutcome,
    PoolPoints,
    ids_digest,
    kept_ids,
    kept_rows,
    load_signatures,
    load_vectors,
    refresh_pairs,
    signature_table,
    state_file,
    stored_fingerprint,
    write_state,
)
from mig_assets.core.curation.near_duplicates import (
    NEAR_DUPLICATES_SCHEMA,
    EmbeddingParams,
    MinHashParams,
    clusters,
    cosine,
    embedding_pairs,
    estimated_jaccard,
    minhash_pairs,
    range_query,
)

Weights = Callable[[list[str]], np.ndarray]  # sample ids -> quality weights (NaN: none)


def sign_locally(stale: dict[str, Path], params: MinHashParams, include_response: bool) -> dict[str, pa.Table]:
    """Each stale shard's signature table, computed in this process."""
    return {shard: signature_table(kept_rows(path), params, include_response) for shard, path in stale.items()}


def signature_fingerprints(raw_pool_files: dict[str, Path], params: MinHashParams, include_response: bool) -> dict[str, str]:
    """What each shard's signatures must have been computed from: the parameters and its kept ids."""
    base = f"{params.signature_fingerprint()}|response={include_response}"
    return {shard: f"{base}|ids={ids_digest(kept_ids(path))}" for shard, path in raw_pool_files.items()}


def minhash_clusters(
    warehouse_dir: Path,
    raw_pool_files: dict[str, Path],
    params: MinHashParams,
    include_response: bool,
    weights: Weights,
    sign: Callable[[dict[str, Path]], dict[str, pa.Table]] | None = None,
) -> tuple[pa.Table, dict]:
    """Lexical clusters of the pool (``raw_pool_files`` in pool order) and the run's figures."""
    started = time.perf_counter()
    fingerprints = signature_fingerprints(raw_pool_files, params, include_response)
    stale = {s: f for s, f in raw_pool_files.items() if stored_fingerprint(state_file(warehouse_dir, "minhash_signatures", s)) != fingerprints[s]}
    signed = (sign or (lambda files: sign_locally(files, params, include_response)))(stale) if stale else {}
    for shard, table in signed.items():
        write_state(table, state_file(warehouse_dir, "minhash_signatures", shard), fingerprints[shard])
    signing = time.perf_counter() - started
    points = load_signatures(warehouse_dir, list(raw_pool_files), params.num_perm)
    pair_fingerprints = {s: f"{fp}|{params.pair_fingerprint()}" for s, fp in fingerprints.items()}
    outcome = refresh_pairs(warehouse_dir, "minhash_pairs", points, pair_fingerprints, lambda rows: minhash_pairs(points.matrix, points.valid, rows, params))
    table = _clusters(points, outcome, "minhash", weights, lambda a, b: estimated_jaccard(points.matrix, a, b))
    figures = {
        "shards_signed": sorted(stale),
        "samples_signed": sum(t.num_rows for t in signed.values()),
        "samples_without_words": int((~points.valid).sum()),
        "signing_seconds": round(signing, 3),
        **_figures(points, outcome, table, time.perf_counter() - started - signing),
    }
    return table, figures


def embedding_clusters(
    warehouse_dir: Path, embedding_files: dict[str, Path], params: EmbeddingParams, weights: Weights, search=range_query
) -> tuple[pa.Table, dict]:
    """Semantic clusters of the pool (``embedding_files``: each shard's sample_embeddings, in pool order)."""
    started = time.perf_counter()
    points, digests = load_vectors(embedding_files)
    fingerprints = {s: f"{params.pair_fingerprint()}|{digest}" for s, digest in digests.items()}
    outcome = refresh_pairs(warehouse_dir, "embedding_pairs", points, fingerprints, lambda rows: embedding_pairs(points.matrix, rows, params, search))
    table = _clusters(points, outcome, "embedding", weights, lambda a, b: cosine(points.matrix, a, b))
    index = (
        "exact (faiss flat)"
        if len(points.ids) <= params.exact_search_below
        else f"faiss IVF, {int(4 * np.sqrt(len(points.ids)))} cells, nprobe {params.nprobe}"
    )
    return table, {"index": index, **_figures(points, outcome, table, time.perf_counter() - started)}


def _clusters(points: PoolPoints, outcome: PairsOutcome, method: str, weights: Weights, similarity) -> pa.Table:
    """The clusters of the live pairs, weighing only the samples that are in one."""
    every = np.full(len(points.ids), np.nan)
    nodes = np.unique(np.concatenate([outcome.left, outcome.right]))
    every[nodes] = weights([points.ids[row] for row in nodes.tolist()])
    return clusters(points.ids, outcome.left, outcome.right, every, method, similarity)


def _figures(points: PoolPoints, outcome: PairsOutcome, table: pa.Table, seconds: float) -> dict:
    members = table.num_rows
    clusters_found = len(set(table.column("cluster_id").to_pylist()))
    return {
        "samples": len(points.ids),
        "shards_queried": outcome.queried_shards,
        "shards_reused": outcome.reused_shards,
        "rows_queried": outcome.queried_rows,
        "pairs": len(outcome.left),
        "clusters": clusters_found,
        "samples_in_clusters": members,
        "non_representatives": members - clusters_found,
        "pairs_seconds": round(seconds, 3),
    }


def combined(tables: list[pa.Table]) -> pa.Table:
    """Every method's rows in one table, sorted by method, cluster_id, sample_id."""
    table = pa.concat_tables([NEAR_DUPLICATES_SCHEMA.empty_table(), *tables])
    return table.sort_by([("method", "ascending"), ("cluster_id", "ascending"), ("sample_id", "ascending")])
