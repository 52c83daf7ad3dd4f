"""The per-shard work of ``near_duplicates`` on a Ray cluster's actors: MinHash signatures of the
stale shards (each actor reads a shard's raw_pool Parquet through the workers' storage) and the
faiss range queries of the semantic method (each actor holds a copy of the index). The driver
keeps the rest (the LSH index, the clustering), so the outputs are those of local execution: the
actors run the same functions. No Dagster import; ray is imported lazily.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from mig_assets.core.curation.near_duplicate_state import kept_rows, signature_table
from mig_assets.core.curation.near_duplicates import MinHashParams, range_query
from mig_assets.core.execution.pipeline import RaySettings
from mig_assets.core.execution.storage import join_uri, open_uri

QUERY_CHUNK = 16_384  # query vectors per actor call


class NearDuplicateActor:
    """Signs shards and answers range queries; the index arrives once, serialized, per pipeline."""

    def __init__(self, params: MinHashParams, include_response: bool, index_bytes: np.ndarray | None = None):
        self.params, self.include_response = params, include_response
        self.index = None
        if index_bytes is not None:
            import faiss

            self.index = faiss.deserialize_index(index_bytes)

    def sign(self, uri: str) -> pa.Table:
        filesystem, path = open_uri(uri)
        return signature_table(kept_rows(path, filesystem), self.params, self.include_response)

    def query(self, vectors: np.ndarray, threshold: float, probes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        faiss.omp_set_num_threads(1)  # one core per actor: the pool is the parallelism
        return range_query(self.index, vectors, threshold, probes)


def _actors(settings: RaySettings, count: int, *args):
    import ray

    remote = ray.remote(num_cpus=settings.cpus_per_actor, max_restarts=settings.max_restarts, max_task_retries=settings.max_task_retries)(NearDuplicateActor)
    return [remote.remote(*args) for _ in range(max(1, min(settings.num_actors, count)))]


def sign_shards_on_ray(
    stale: dict[str, Path], warehouse_dir: Path, params: MinHashParams, include_response: bool, settings: RaySettings
) -> dict[str, pa.Table]:
    """Each stale shard's signature table, computed by the actor pool (one task a shard)."""
    from ray.util import ActorPool

    storage = settings.storage
    relative = {shard: Path(path).resolve().relative_to(Path(warehouse_dir).resolve()).as_posix() for shard, path in stale.items()}
    for file in relative.values():
        storage.put(file)
    pool = ActorPool(_actors(settings, len(stale), params, include_response))
    shards = list(stale)
    tables = pool.map(lambda actor, shard: actor.sign.remote(join_uri(storage.root, relative[shard])), shards)
    return dict(zip(shards, tables))


def ray_search(settings: RaySettings):
    """A ``search(index, query_vectors, threshold, probes)`` for :func:`embedding_pairs` that spreads
    the queries over the actor pool, in chunks, and returns the hits in query order."""

    def search(index, vectors: np.ndarray, threshold: float, probes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        import faiss
        from ray.util import ActorPool

        chunks = [(start, vectors[start : start + QUERY_CHUNK]) for start in range(0, len(vectors), QUERY_CHUNK)]
        if not chunks:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        pool = ActorPool(_actors(settings, len(chunks), MinHashParams(), False, faiss.serialize_index(index)))
        chunk_probes = {start: None if probes is None else probes[start : start + QUERY_CHUNK] for start, _ in chunks}
        results = pool.map(lambda actor, chunk: actor.query.remote(chunk[1], threshold, chunk_probes[chunk[0]]), chunks)
        rows, found = [], []
        for (start, _), (chunk_rows, chunk_found) in zip(chunks, results):
            rows.append(start + chunk_rows)
            found.append(chunk_found)
        return np.concatenate(rows), np.concatenate(found)

    return search
