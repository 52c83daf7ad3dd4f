"""What a selection version read, kept per version so that its lineage stays true after a re-tag,
a re-score or a replaced shard file.

One Parquet file per version, ``warehouse/selection_inputs/<selection>/v0001.parquet``: a row per
sample of the pool the version saw (its tags, status and tagger; its weight, the weight's origin
and the scorer; its embedding model; its shard, line and the shard file's SHA-256), and, for
members only, the raw input record, its format and original id (the exact text of its line or Parquet row) with its SHA-256.
The file's key-value metadata holds the version-level facts: the Dagster run id and data version
of every upstream materialization, per shard for the partitioned assets. MIG versions add
``v0001.graph.parquet``: the label graph and the final coverage s, so that a rejected sample's
final gain Y_i . phi'(s) is recomputed from the same inputs.

Changes are found by comparing a version's rows with the current ones (or the next version's):
core/selection/input_changes.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from mig_assets.core.store.catalog import has_relation, warehouse_dir_of
from mig_assets.core.store.layout import IMPORTED_COLUMNS, WarehouseLayout
from mig_assets.core.store.parquet import dictionary_columns, remove_stale_staging, write_parquet_atomic, write_rows_atomic

INPUTS_DIR = "selection_inputs"
METADATA_KEY = b"mig.selection_inputs"
# the partitioned assets whose per-shard materializations a version records (run id, data version)
SHARD_INPUT_ASSETS = ("raw_pool", "atomic_tags", "quality_scores", "sample_embeddings")

INPUTS_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("rank", pa.int32()),  # null: in the pool, not selected
        ("shard", pa.string()),
        ("line_no", pa.int64()),
        ("source_file", pa.string()),
        ("file_sha256", pa.string()),
        ("ingest_run_id", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("tag_status", pa.string()),
        ("tag_reason", pa.string()),
        ("tagger", pa.string()),  # backend:model prompt_version, or the backend alone (imported tags)
        ("scorer", pa.string()),  # of quality_scores; null: no scored quality
        ("weight", pa.float64()),  # what the selection weighed it by (left-out samples: their score, unused)
        ("weight_origin", pa.string()),
        ("embedding_model", pa.string()),
        ("source_format", pa.string()),  # members only
        ("original_id", pa.string()),  # members only
        ("raw", pa.string()),  # members only
    ]
)
# the inputs that are the same for every row of a shard
SHARD_FACTS = ("source_file", "file_sha256", "ingest_run_id")
# inputs with a few distinct values in a whole pool (one tagger, one scorer, ...)
FEW_VALUES = ("tag_status", "tag_reason", "tagger", "scorer", "weight_origin", "embedding_model")
# the snapshot's columns written without a dictionary: a value of its own on (nearly) every row
INPUTS_DICTIONARY = dictionary_columns(INPUTS_SCHEMA, ("sample_id", "rank", "line_no", "weight", "original_id", "raw"))
GRAPH_SCHEMA = pa.schema([("label", pa.string()), ("coverage", pa.float64()), ("neighbours", pa.list_(pa.int32())), ("weights", pa.list_(pa.float32()))])
IMPORTED_ORIGIN = "imported Deita annotation"


def scorer_sql(backend: str = "backend", model: str = "model", prompt_version: str = "prompt_version") -> str:
    """Who scored a quality_scores row, from the SQL of its backend, model and prompt version."""
    return f"CASE WHEN {backend} = 'imported' THEN 'imported Deita annotations' ELSE {backend} || ':' || {model} || ' ' || {prompt_version} END"


# the scored quality of a sample and who scored it (also what the selections weigh by)
SCORED_QUALITY_SQL = (
    f"SELECT sample_id, any_value(score) AS score, any_value({scorer_sql()}) AS scorer FROM quality_scores WHERE status = 'ok' GROUP BY sample_id"
)
# what a pool row reads of its tag row (t_) and its scored quality (q_)
TAG_COLUMNS = ("tags", "status", "reason", "backend", "model", "prompt_version")


def inputs_path(warehouse_dir: Path, selection: str, version: int) -> Path:
    return Path(warehouse_dir) / INPUTS_DIR / selection / f"v{version:04d}.parquet"


def graph_path(warehouse_dir: Path, selection: str, version: int) -> Path:
    return Path(warehouse_dir) / INPUTS_DIR / selection / f"v{version:04d}.graph.parquet"


def raw_sha256(raw: str | None) -> str | None:
    return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest() if raw is not None else None


def inputs_sql(con, extra_columns: str = "", *, shard_facts: bool = True) -> str:
    """The SELECT of every sample's present inputs in :data:`INPUTS_SCHEMA`'s columns (a null rank,
    no raw record), with ``extra_columns`` after them, FROM the pool's rows ``s``: each sample of
    ``samples`` with its tag row (``s.t_tags``, ``s.t_status``, ...) and its scored quality
    (``s.q_score``, ``s.q_scorer``). The pool a selection loads and the lineage it records come from
    this one query. Without ``shard_facts`` the columns that are the same for every row of a shard
    (:data:`SHARD_FACTS`) are left out, for :func:`compact_lineage` to add."""
    embedded = (
        "(SELECT sample_id, any_value(model_id) AS model_id FROM sample_embeddings GROUP BY sample_id)"
        if has_relation(con, "sample_embeddings")
        else "(SELECT NULL::VARCHAR AS sample_id, NULL::VARCHAR AS model_id)"
    )
    facts = "s.source_file, st.file_sha256, s.ingest_run_id," if shard_facts else ""
    return f"""SELECT s.sample_id, NULL::INTEGER AS rank, s.shard, s.line_no, {facts}
                   s.t_tags AS tags, s.t_status AS tag_status, s.t_reason AS tag_reason,
                   CASE WHEN coalesce(s.t_model, '') = '' THEN s.t_backend ELSE s.t_backend || ':' || s.t_model || ' ' || s.t_prompt_version END AS tagger,
                   s.q_scorer AS scorer, coalesce(s.q_score, s.imported_quality) AS weight,
                   CASE WHEN s.q_score IS NOT NULL THEN 'quality_scores (' || s.q_scorer || ')'
                        WHEN s.imported_quality IS NOT NULL THEN '{IMPORTED_ORIGIN}' END AS weight_origin,
                   e.model_id AS embedding_model,
                   s.source_format, s.original_id, NULL::VARCHAR AS raw{extra_columns}
            FROM ({pool_rows_sql(con)}) s {"LEFT JOIN shards st USING (shard)" if shard_facts else ""} LEFT JOIN {embedded} e USING (sample_id)"""


def pool_rows_sql(con) -> str:
    """``samples`` with the columns of each sample's tag row (``t_``) and scored quality (``q_``).

    When the pool's tags and scores are all its own annotations read in place
    (:meth:`~mig_assets.core.store.layout.WarehouseLayout.annotations_in_place`), those columns are
    computed from the row itself, as the views derive them (:data:`IMPORTED_COLUMNS`), instead of
    joining the views on the sample id: the same values (a duplicate standing in for a changed kept
    copy has no tag row, so none), without two hash joins and a grouping over every sample (the
    pool's query at 939,000 samples: 1.27-1.31 s -> 0.64-0.67 s)."""
    if WarehouseLayout(warehouse_dir_of(con).parent).annotations_in_place():
        tags, quality = IMPORTED_COLUMNS["atomic_tags"], IMPORTED_COLUMNS["quality_scores"]
        kept = "duplicate_of IS NULL"  # the rows the views derive theirs from
        scored = f"{kept} AND {quality['status']} = 'ok'"  # SCORED_QUALITY_SQL's rows
        scorer = scorer_sql(quality["backend"], quality["model"], quality["prompt_version"])
        derived = [f"CASE WHEN {kept} THEN {tags[name]} END AS t_{name}" for name in TAG_COLUMNS]
        derived += [f"CASE WHEN {scored} THEN {quality['score']} END AS q_score", f"CASE WHEN {scored} THEN {scorer} END AS q_scorer"]
        return f"SELECT *, {', '.join(derived)} FROM samples"
    tag_rows = (
        "atomic_tags"
        if has_relation(con, "atomic_tags")
        else "(SELECT " + ", ".join(f"NULL::{'VARCHAR[]' if name == 'tags' else 'VARCHAR'} AS {name}" for name in ("sample_id", *TAG_COLUMNS)) + ")"
    )
    scored = (
        f"({SCORED_QUALITY_SQL})"
        if has_relation(con, "quality_scores")
        else "(SELECT NULL::VARCHAR AS sample_id, NULL::DOUBLE AS score, NULL::VARCHAR AS scorer)"
    )
    columns = ", ".join(f"t.{name} AS t_{name}" for name in TAG_COLUMNS)
    return f"SELECT s.*, {columns}, q.score AS q_score, q.scorer AS q_scorer FROM samples s LEFT JOIN {tag_rows} t USING (sample_id) LEFT JOIN {scored} q USING (sample_id)"


def compact_lineage(con, table: pa.Table) -> pa.Table:
    """``table`` (rows of :func:`inputs_sql` without its shard facts) in :data:`INPUTS_SCHEMA`'s
    columns, as dictionary arrays where the pool holds a few distinct values: the shard and its facts,
    added from the shards (ingestion writes one source file and one run per shard file, so a row's
    facts are its shard's; a shard with more than one is an error), and :data:`FEW_VALUES`. A
    million rows then hold a few strings, not a copy each (420 MB of rows become about 220 MB at the
    paper's scale)."""
    facts = con.sql(
        "SELECT r.shard, r.source_file, st.file_sha256, r.ingest_run_id "
        "FROM (SELECT DISTINCT shard, source_file, ingest_run_id FROM raw_pool_rows) r LEFT JOIN shards st USING (shard)"
    ).to_arrow_table()
    shards = facts.column("shard").combine_chunks()
    if len(pc.unique(shards)) != len(shards):
        counts = pc.value_counts(shards)
        twice = [str(c["values"]) for c in counts.to_pylist() if c["counts"] > 1]
        raise ValueError(f"shards {twice} hold rows of more than one source file or ingest run: ingest them again")
    position = pc.index_in(table.column("shard"), value_set=shards)
    columns = {name: table.column(name) for name in table.column_names}
    for name in ("shard", *SHARD_FACTS):
        values = facts.column(name).combine_chunks()
        columns[name] = pa.chunked_array([pa.DictionaryArray.from_arrays(chunk, values) for chunk in position.chunks], pa.dictionary(pa.int32(), pa.string()))
    for name in FEW_VALUES:
        columns[name] = pc.dictionary_encode(columns[name])
    return pa.table({name: columns[name] for name in INPUTS_SCHEMA.names}).unify_dictionaries()


def current_inputs(con, sample_ids: list[str] | None = None) -> pa.Table:
    """The present inputs of the pool's samples (of ``sample_ids`` only, when given), in
    :data:`INPUTS_SCHEMA` with a null rank; the weight is the scored quality, else the imported one
    (null: neither); no raw record (:func:`with_raw_records` adds those of a few samples)."""
    where = "WHERE s.sample_id IN (SELECT unnest($ids))" if sample_ids is not None else ""
    table = con.sql(f"{inputs_sql(con)} {where} ORDER BY s.sample_id", params={"ids": list(sample_ids)} if sample_ids is not None else None).to_arrow_table()
    return table.cast(INPUTS_SCHEMA)


def with_raw_records(inputs: pa.Table, records: pa.Table) -> pa.Table:
    """``inputs`` (:data:`INPUTS_SCHEMA`) with the raw record of the samples in ``records``
    (sample_id, raw: :func:`~mig_assets.core.store.catalog.sample_copies` of a few ids; the pool's
    whole raw column is the bulk of its Parquet)."""
    position = pc.index_in(inputs.column("sample_id"), value_set=records.column("sample_id"))
    raw = pc.take(records.column("raw"), position)
    return inputs.set_column(INPUTS_SCHEMA.get_field_index("raw"), "raw", raw.cast(pa.string()))


def version_inputs(current: pa.Table, pool_ids: list[str], weights: np.ndarray, fill: float, selected_ids: list[str]) -> pa.Table:
    """``current`` (from :func:`current_inputs`) as a version's snapshot: members first in rank
    order, each pool sample with the weight the selection used and its origin; raw record, format
    and original id of members only. Samples left out of the pool (failed tagging) keep their own
    score, which the selection did not use (their tag status says so)."""
    table, order = snapshot_rows(current, pool_ids, weights, fill, selected_ids)
    return table.take(order).cast(INPUTS_SCHEMA)


def snapshot_rows(
    current: pa.Table,
    pool_ids: list[str],
    weights: np.ndarray,
    fill: float,
    selected_ids: list[str],
    *,
    by_sample_id: pa.Array | None = None,
    rows: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[pa.Table, pa.Array]:
    """:func:`version_inputs` as its rows (in ``current``'s order; the columns :func:`compact_lineage`
    made dictionary arrays still so, cast as they are written) and the order to write them in.
    When known (:class:`LineageRows`): ``by_sample_id``, ``current``'s rows in sample_id order, and
    ``rows``, the row of ``current`` that holds each pool sample and each member (in rank order),
    so that no id is looked up."""
    n = current.num_rows
    if rows is None:
        ids = current.column("sample_id")
        in_pool = pc.index_in(ids, value_set=pa.array(pool_ids, pa.string()))
        pooled = pc.is_valid(in_pool)
        used = pc.take(pa.array(np.asarray(weights, np.float64)), in_pool) if len(pool_ids) else pa.nulls(n, pa.float64())
        rank = pc.add(pc.index_in(ids, value_set=pa.array(selected_ids, pa.string())), 1).cast(pa.int32())
    else:
        pool_rows, member_rows = rows
        pooled_rows, used_weights, ranks = np.zeros(n, bool), np.zeros(n), np.zeros(n, np.int32)
        pooled_rows[pool_rows], used_weights[pool_rows] = True, weights
        ranks[member_rows] = np.arange(1, len(member_rows) + 1, dtype=np.int32)
        pooled, used, rank = pa.array(pooled_rows), pa.array(used_weights), pa.array(ranks, mask=ranks == 0)
    weight = pc.if_else(pooled, used, current.column("weight"))
    origin = fill_where(current.column("weight_origin"), pc.and_(pooled, pc.is_null(current.column("weight_origin"))), f"no score: the pool median {fill:.6g}")
    member = as_array(pc.is_valid(rank))
    table = current.set_column(INPUTS_SCHEMA.get_field_index("rank"), "rank", rank)
    table = table.set_column(INPUTS_SCHEMA.get_field_index("weight"), "weight", weight)
    table = table.set_column(INPUTS_SCHEMA.get_field_index("weight_origin"), "weight_origin", origin)
    # members by rank, then the others by sample_id: in the order given, or kept when ``current`` is
    # already sorted by sample_id (current_inputs), else sorted
    if rows is not None:
        members = pa.array(rows[1], pa.uint64())
    else:
        members = pc.indices_nonzero(member)
        members = members.take(pc.sort_indices(pc.take(rank, members)))
    for name in ("source_format", "original_id", "raw"):
        table = table.set_column(INPUTS_SCHEMA.get_field_index(name), name, members_only(table.column(name), members, n))
    if by_sample_id is not None:
        others = by_sample_id.filter(pc.invert(pc.take(member, by_sample_id)))
    else:
        others = pc.indices_nonzero(pc.invert(member))
        if not is_sorted(current.column("sample_id")):
            others = others.take(pc.sort_indices(pc.take(current.column("sample_id"), others)))
    return table, pa.concat_arrays([members, others])


def members_only(column: pa.ChunkedArray, members: pa.Array, n: int) -> pa.DictionaryArray:
    """``column``'s values at the rows ``members``, null at the other of its ``n`` rows: a dictionary
    over the members' values, made from them alone instead of a copy of the whole column."""
    values = column.take(members)
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    indices = np.full(n, -1, np.int32)
    indices[members.to_numpy()] = np.arange(len(members), dtype=np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(indices, mask=indices < 0), as_array(values))


def fill_where(column: pa.ChunkedArray, where: pa.Array | pa.ChunkedArray, value: str) -> pa.ChunkedArray | pa.Array:
    """``column`` (strings, or a dictionary of strings) with ``value`` where ``where`` holds; a
    dictionary stays one, with ``value`` added to it, instead of becoming a copy of every string.
    Where ``where`` holds nowhere: ``column`` itself."""
    if not pc.any(where).as_py():
        return column
    if not pa.types.is_dictionary(column.type):
        return pc.if_else(where, pa.scalar(value, pa.string()), column)
    column, where = as_array(column), as_array(where)  # from_arrays takes arrays, not chunks
    indices = pc.if_else(where, pa.scalar(len(column.dictionary), column.indices.type), column.indices)
    return pa.DictionaryArray.from_arrays(indices, pa.concat_arrays([column.dictionary, pa.array([value], pa.string())]))


def as_array(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """``values`` as one array (a chunked array's chunks combined)."""
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def is_sorted(values: pa.ChunkedArray | pa.Array) -> bool:
    """Whether ``values`` are in strictly ascending order (sample ids: distinct)."""
    values = as_array(values)
    return len(values) < 2 or bool(pc.all(pc.less(values.slice(0, len(values) - 1), values.slice(1))).as_py())


class LineageRows:
    """Every sample's inputs as a selection loaded them (:data:`INPUTS_SCHEMA`, no raw record, in the
    query's order) and their order by sample_id, which the snapshot is written in: sorted in a
    thread once :meth:`sort_in_background` is called (Arrow's sort holds no GIL, so it runs on a
    second core while the greedy runs). Only the permutation is made, not a sorted copy of the rows."""

    def __init__(self, table: pa.Table):
        self.table = table
        self._order: Future[pa.Array] | None = None

    def set_aside(self, folder: Path) -> None:
        """Hold the rows in a file instead of in memory until the snapshot reads them: written to an
        Arrow IPC file in ``folder`` and mapped back, the file unlinked at once (the mapping keeps
        it until the rows are dropped; a file a killed run left between the write and the unlink
        is removed by the next). The kernel pages the rows in as the snapshot reads them and may
        drop them under pressure, so they do not sit beside the greedy's matrices (about 220 MB at
        939,000 samples)."""
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(folder)
        path = folder / f".staging-{os.getpid()}-lineage-{id(self)}.arrow"
        try:
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, self.table.schema) as writer:
                writer.write_table(self.table)
            self.table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        finally:
            path.unlink(missing_ok=True)

    def sort_in_background(self) -> None:
        if self._order is None:
            executor = ThreadPoolExecutor(1)
            self._order = executor.submit(pc.sort_indices, self.table.column("sample_id"))
            executor.shutdown(wait=False)

    def by_sample_id(self) -> pa.Array:
        """The rows' indices in sample_id order."""
        self.sort_in_background()
        assert self._order is not None
        return self._order.result()


def write_inputs(path: Path, table: pa.Table, facts: dict, order: pa.Array | None = None) -> Path:
    """The snapshot (its rows in ``order``, when given: reordered a batch at a time) with the
    version-level ``facts`` (JSON) in the file's key-value metadata."""
    metadata = {METADATA_KEY: json.dumps(facts, sort_keys=True, default=str).encode()}
    if order is None:
        return write_parquet_atomic(table.cast(INPUTS_SCHEMA).replace_schema_metadata(metadata), path, INPUTS_DICTIONARY)
    return write_rows_atomic(table, order, path, schema=INPUTS_SCHEMA.with_metadata(metadata), use_dictionary=INPUTS_DICTIONARY)


def read_facts(path: Path) -> dict:
    return json.loads(pq.read_schema(path).metadata[METADATA_KEY])


def read_inputs_row(con, path: Path, sample_id: str) -> dict | None:
    """One sample's row of a snapshot (DuckDB pushes the filter into the Parquet scan)."""
    cursor = con.execute("SELECT * FROM read_parquet(?) WHERE sample_id = ?", [str(path), sample_id])
    names = [d[0] for d in cursor.description]
    rows = cursor.fetchall()
    return dict(zip(names, rows[0])) if rows else None


def write_graph(path: Path, labels: list[str], W: sp.csr_array, coverage: np.ndarray) -> Path:
    """The label graph (row-wise adjacency) and the final coverage s of a MIG version."""
    W = sp.csr_array(W)
    indptr = pa.array(W.indptr, pa.int32())
    table = pa.table(
        {
            "label": pa.array(labels, pa.string()),
            "coverage": pa.array(np.asarray(coverage, np.float64), pa.float64()),
            "neighbours": pa.ListArray.from_arrays(indptr, pa.array(W.indices, pa.int32())),
            "weights": pa.ListArray.from_arrays(indptr, pa.array(W.data, pa.float32())),
        },
        schema=GRAPH_SCHEMA,
    )
    return write_parquet_atomic(table, path)


def read_graph(path: Path) -> tuple[list[str], sp.csr_array, np.ndarray]:
    table = pq.read_table(path)
    neighbours, weights = table.column("neighbours").combine_chunks(), table.column("weights").combine_chunks()
    n = table.num_rows
    W = sp.csr_array((weights.values.to_numpy(), neighbours.values.to_numpy(), neighbours.offsets.to_numpy()), shape=(n, n))
    return table.column("label").to_pylist(), W, table.column("coverage").to_numpy()
