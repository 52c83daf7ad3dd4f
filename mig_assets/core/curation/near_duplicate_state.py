"""The incremental state of ``near_duplicates`` under ``warehouse/near_duplicates/``.

Per shard, in files that carry a fingerprint of what they were computed from (the method's
parameters and a hash of the shard's sample ids, plus the embedding model)::

    minhash_signatures/shard=<key>/part-0.parquet   sample_id, signature (null: a text without words)
    minhash_pairs/shard=<key>/part-0.parquet        sample_id, other_id, similarity
    embedding_pairs/shard=<key>/part-0.parquet      sample_id, other_id, similarity

A shard whose signatures file is missing or has another fingerprint is signed again; the others
are read back. The index (datasketch's LSH over every signature, faiss over every embedding) is
rebuilt each run from the stored state, and only the rows of shards whose pairs file is stale (new
or changed shards, or changed parameters) are looked up in it: their pairs with every sample of the
pool, old or new, go to their own pairs file. An unchanged shard's pairs are read back, less the
pairs whose other end has left the pool. So a new shard costs its own signatures and queries, not
an all-against-all pass, and the pairs found are those a run from scratch finds (a pair is found
from either end; LSH banding and exact search do not depend on the rest of the index).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mig_assets.core.curation.near_duplicates import MinHashParams, minhash_signatures
from mig_assets.core.embedding.encoder import arrow_to_vectors
from mig_assets.core.store.parquet import write_parquet_atomic
from mig_assets.core.tagging.rows import query_text

STATE_DIR = "near_duplicates"
FINGERPRINT_KEY = b"mig_fingerprint"
PAIRS_SCHEMA = pa.schema([("sample_id", pa.string()), ("other_id", pa.string()), ("similarity", pa.float64())])


def state_file(warehouse_dir: Path, kind: str, shard: str) -> Path:
    """``kind``: minhash_signatures, minhash_pairs or embedding_pairs."""
    return Path(warehouse_dir) / STATE_DIR / kind / f"shard={shard}" / "part-0.parquet"


def stored_fingerprint(path: Path) -> str | None:
    """The fingerprint a state file was written with (None: no file, or none recorded)."""
    if not path.exists():
        return None
    metadata = pq.read_schema(path).metadata or {}
    value = metadata.get(FINGERPRINT_KEY)
    return value.decode() if value is not None else None


def write_state(table: pa.Table, path: Path, fingerprint: str) -> Path:
    return write_parquet_atomic(table.replace_schema_metadata({FINGERPRINT_KEY: fingerprint.encode()}), path)


def ids_digest(ids: list[str], *extra: str) -> str:
    return hashlib.sha256("\n".join([*extra, *ids]).encode()).hexdigest()[:16]


def kept_rows(raw_pool_file, filesystem=None) -> pa.Table:
    """The shard's kept samples (sample_id, messages), in file order."""
    table = pq.read_table(raw_pool_file, columns=["sample_id", "messages", "duplicate_of"], filesystem=filesystem)
    return table.filter(pc.is_null(table.column("duplicate_of"))).select(["sample_id", "messages"])


def kept_ids(raw_pool_file: Path) -> list[str]:
    table = pq.read_table(raw_pool_file, columns=["sample_id", "duplicate_of"])
    return table.filter(pc.is_null(table.column("duplicate_of"))).column("sample_id").to_pylist()


def signature_table(kept: pa.Table, params: MinHashParams, include_response: bool) -> pa.Table:
    """One shard's MinHash signatures: sample_id, signature (fixed-size uint32 list; null without words)."""
    texts = [query_text(messages, include_response) for messages in kept.column("messages").to_pylist()]
    signatures, has_words = minhash_signatures(texts, params)
    values = pa.array(signatures.reshape(-1), type=pa.uint32())
    column = pa.FixedSizeListArray.from_arrays(values, params.num_perm, mask=pa.array(~has_words))
    return pa.table({"sample_id": kept.column("sample_id"), "signature": column})


@dataclass
class PoolPoints:
    """Every sample of the pool for one method, in pool order (shards in registration order, then
    file order; a sample_id seen twice keeps its first row): its shard, its point (signature or
    vector) and whether it can be compared at all."""

    shards: list[str]
    ids: list[str] = field(default_factory=list)
    shard_of_row: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    valid: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @classmethod
    def concat(cls, parts: list[tuple[str, list[str], np.ndarray, np.ndarray]], width: int, dtype) -> "PoolPoints":
        """``parts``: (shard, ids, matrix, valid) per shard, in pool order."""
        seen: set[str] = set()
        ids: list[str] = []
        shard_of_row, matrices, valid = [], [], []
        for position, (_, shard_ids, matrix, shard_valid) in enumerate(parts):
            first = np.zeros(len(shard_ids), dtype=bool)
            for row, sample_id in enumerate(shard_ids):
                first[row] = sample_id not in seen
                seen.add(sample_id)
            ids.extend(np.array(shard_ids, dtype=object)[first].tolist() if len(shard_ids) else [])
            shard_of_row.append(np.full(int(first.sum()), position, dtype=np.int64))
            matrices.append(matrix[first])
            valid.append(shard_valid[first])
        return cls(
            shards=[shard for shard, *_ in parts],
            ids=ids,
            shard_of_row=np.concatenate(shard_of_row) if parts else np.zeros(0, dtype=np.int64),
            matrix=np.concatenate(matrices) if parts else np.zeros((0, width), dtype=dtype),
            valid=np.concatenate(valid) if parts else np.zeros(0, dtype=bool),
        )


def load_signatures(warehouse_dir: Path, shards: list[str], num_perm: int) -> PoolPoints:
    parts = []
    for shard in shards:
        table = pq.read_table(state_file(warehouse_dir, "minhash_signatures", shard))
        column = table.column("signature").combine_chunks()
        valid = np.asarray(column.is_valid(), dtype=bool)
        matrix = np.zeros((table.num_rows, num_perm), dtype=np.uint32)
        if valid.any():
            matrix[valid] = column.drop_null().flatten().to_numpy().reshape(-1, num_perm)
        parts.append((shard, table.column("sample_id").to_pylist(), matrix, valid))
    return PoolPoints.concat(parts, num_perm, np.uint32)


def load_vectors(embedding_files: dict[str, Path]) -> tuple[PoolPoints, dict[str, str]]:
    """The sample embeddings of each shard (in pool order) and a digest of each shard's ids and model."""
    tables = {shard: pq.read_table(path, columns=["sample_id", "model_id", "embedding"]) for shard, path in embedding_files.items()}
    vectors = {shard: arrow_to_vectors(t.column("embedding")).astype(np.float32) for shard, t in tables.items() if t.num_rows}
    dimension = next((v.shape[1] for v in vectors.values()), 1)
    parts = [
        (shard, t.column("sample_id").to_pylist(), vectors.get(shard, np.zeros((0, dimension), dtype=np.float32)), np.ones(t.num_rows, dtype=bool))
        for shard, t in tables.items()
    ]
    digests = {shard: ids_digest(t.column("sample_id").to_pylist(), *t.column("model_id").unique().to_pylist()) for shard, t in tables.items()}
    return PoolPoints.concat(parts, dimension, np.float32), digests


@dataclass
class PairsOutcome:
    left: np.ndarray
    right: np.ndarray
    queried_shards: list[str]
    queried_rows: int
    reused_shards: int


def refresh_pairs(
    warehouse_dir: Path,
    kind: str,
    points: PoolPoints,
    fingerprints: dict[str, str],
    find_pairs: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> PairsOutcome:
    """The pool's pairs for one method: the stale shards' rows are looked up with ``find_pairs(rows)``
    (pairs of global rows with their similarity) and each stale shard's pairs file rewritten; the
    other shards' files are read back. Returns every live pair as distinct sorted rows (left < right)."""
    stale = [shard for shard in points.shards if stored_fingerprint(state_file(warehouse_dir, kind, shard)) != fingerprints[shard]]
    stale_positions = np.array([points.shards.index(shard) for shard in stale], dtype=np.int64)
    query_rows = np.flatnonzero(np.isin(points.shard_of_row, stale_positions))
    left, right, similarity = find_pairs(query_rows)
    ids = np.array(points.ids, dtype=object)
    for shard, position in zip(stale, stale_positions.tolist()):
        mine = (points.shard_of_row[left] == position) | (points.shard_of_row[right] == position)
        own = np.where(points.shard_of_row[left[mine]] == position, left[mine], right[mine])
        other = np.where(own == left[mine], right[mine], left[mine])
        table = pa.table({"sample_id": ids[own].tolist(), "other_id": ids[other].tolist(), "similarity": similarity[mine]}, schema=PAIRS_SCHEMA)
        write_state(table, state_file(warehouse_dir, kind, shard), fingerprints[shard])
    row_of = {sample_id: row for row, sample_id in enumerate(points.ids)}
    lefts, rights = [left], [right]
    for shard in points.shards:
        if shard in stale:
            continue
        stored = pq.read_table(state_file(warehouse_dir, kind, shard))
        pairs = [
            (row_of[a], row_of[b]) for a, b in zip(stored.column("sample_id").to_pylist(), stored.column("other_id").to_pylist()) if a in row_of and b in row_of
        ]
        if pairs:
            found = np.array(pairs, dtype=np.int64)
            lefts.append(found.min(axis=1))
            rights.append(found.max(axis=1))
    every = np.stack([np.concatenate(lefts), np.concatenate(rights)], axis=1) if len(points.ids) else np.zeros((0, 2), dtype=np.int64)
    every = np.unique(every, axis=0) if len(every) else every
    return PairsOutcome(every[:, 0], every[:, 1], stale, len(query_rows), len(points.shards) - len(stale))


def quality_weights(con, sample_ids: list[str], scored_quality_sql: str | None) -> np.ndarray:
    """Each sample's quality weight: its ``quality_scores`` score (``scored_quality_sql``: one row per
    scored sample, None when the view is absent), else its imported Deita score; NaN when neither."""
    if not sample_ids:
        return np.zeros(0)
    scored = f"({scored_quality_sql})" if scored_quality_sql else "(SELECT NULL::VARCHAR AS sample_id, NULL::DOUBLE AS score)"
    rows = con.sql(
        f"""SELECT s.sample_id, coalesce(q.score, s.imported_quality) AS weight
            FROM samples s LEFT JOIN {scored} q USING (sample_id) WHERE s.sample_id IN (SELECT unnest($ids))""",
        params={"ids": sample_ids},
    ).fetchall()
    weight_of = {sample_id: weight for sample_id, weight in rows}
    return np.array([np.nan if weight_of.get(i) is None else float(weight_of[i]) for i in sample_ids], dtype=np.float64)
