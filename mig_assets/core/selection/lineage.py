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

Changes are found by comparing a version's rows with the current ones (or the next version's).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from mig_assets.core.store.catalog import has_relation
from mig_assets.core.store.parquet import write_parquet_atomic, write_rows_atomic

INPUTS_DIR = "selection_inputs"
METADATA_KEY = b"mig.selection_inputs"
# the partitioned assets whose per-shard materializations a version records (run id, data version)
SHARD_INPUT_ASSETS = ("raw_pool", "atomic_tags", "quality_scores", "sample_embeddings")
# the asset whose re-materialization changes each compared field
CHANGED_BY = {"tags": "atomic_tags", "quality": "quality_scores", "raw_record": "raw_pool", "embedding_model": "sample_embeddings"}

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
GRAPH_SCHEMA = pa.schema([("label", pa.string()), ("coverage", pa.float64()), ("neighbours", pa.list_(pa.int32())), ("weights", pa.list_(pa.float32()))])
IMPORTED_ORIGIN = "imported Deita annotation"
# the scored quality of a sample and who scored it (also what the selections weigh by)
SCORED_QUALITY_SQL = (
    "SELECT sample_id, any_value(score) AS score, any_value(CASE WHEN backend = 'imported' THEN 'imported Deita annotations' "
    "ELSE backend || ':' || model || ' ' || prompt_version END) AS scorer "
    "FROM quality_scores WHERE status = 'ok' GROUP BY sample_id"
)


def inputs_path(warehouse_dir: Path, selection: str, version: int) -> Path:
    return Path(warehouse_dir) / INPUTS_DIR / selection / f"v{version:04d}.parquet"


def graph_path(warehouse_dir: Path, selection: str, version: int) -> Path:
    return Path(warehouse_dir) / INPUTS_DIR / selection / f"v{version:04d}.graph.parquet"


def raw_sha256(raw: str | None) -> str | None:
    return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest() if raw is not None else None


def inputs_sql(con, extra_columns: str = "") -> str:
    """The SELECT of every sample's present inputs in :data:`INPUTS_SCHEMA`'s columns (a null rank,
    no raw record), with ``extra_columns`` after them, FROM ``samples s`` and its joins (the tag
    row ``t``, the scored quality ``q``): the pool a selection loads and the lineage it records
    come from this one query."""
    tags = (
        "atomic_tags"
        if has_relation(con, "atomic_tags")
        else (
            "(SELECT NULL::VARCHAR AS sample_id, NULL::VARCHAR[] AS tags, NULL::VARCHAR AS status, NULL::VARCHAR AS reason, "
            "NULL::VARCHAR AS backend, NULL::VARCHAR AS model, NULL::VARCHAR AS prompt_version)"
        )
    )
    scored = (
        f"({SCORED_QUALITY_SQL})"
        if has_relation(con, "quality_scores")
        else "(SELECT NULL::VARCHAR AS sample_id, NULL::DOUBLE AS score, NULL::VARCHAR AS scorer)"
    )
    embedded = (
        "(SELECT sample_id, any_value(model_id) AS model_id FROM sample_embeddings GROUP BY sample_id)"
        if has_relation(con, "sample_embeddings")
        else "(SELECT NULL::VARCHAR AS sample_id, NULL::VARCHAR AS model_id)"
    )
    return f"""SELECT s.sample_id, NULL::INTEGER AS rank, s.shard, s.line_no, s.source_file, st.file_sha256, s.ingest_run_id,
                   t.tags, t.status AS tag_status, t.reason AS tag_reason,
                   CASE WHEN coalesce(t.model, '') = '' THEN t.backend ELSE t.backend || ':' || t.model || ' ' || t.prompt_version END AS tagger,
                   q.scorer, coalesce(q.score, s.imported_quality) AS weight,
                   CASE WHEN q.score IS NOT NULL THEN 'quality_scores (' || q.scorer || ')'
                        WHEN s.imported_quality IS NOT NULL THEN '{IMPORTED_ORIGIN}' END AS weight_origin,
                   e.model_id AS embedding_model,
                   s.source_format, s.original_id, NULL::VARCHAR AS raw{extra_columns}
            FROM samples s LEFT JOIN shards st USING (shard) LEFT JOIN {tags} t USING (sample_id)
                 LEFT JOIN {scored} q USING (sample_id) LEFT JOIN {embedded} e USING (sample_id)"""


def current_inputs(con, sample_ids: list[str] | None = None, raw_for: Sequence[str] = ()) -> pa.Table:
    """The present inputs of the pool's samples (of ``sample_ids`` only, when given), in
    :data:`INPUTS_SCHEMA` with a null rank; the weight is the scored quality, else the imported one
    (null: neither); the raw record for ``raw_for`` only."""
    where = "WHERE s.sample_id IN (SELECT unnest($ids))" if sample_ids is not None else ""
    table = con.sql(f"{inputs_sql(con)} {where} ORDER BY s.sample_id", params={"ids": list(sample_ids)} if sample_ids is not None else None).to_arrow_table()
    return with_raw_records(con, table.cast(INPUTS_SCHEMA), raw_for)


def with_raw_records(con, inputs: pa.Table, raw_for: Sequence[str]) -> pa.Table:
    """``inputs`` (:data:`INPUTS_SCHEMA`) with the raw record of the samples in ``raw_for`` (only
    theirs: the pool's whole raw column is the bulk of its Parquet)."""
    raw = con.sql("SELECT sample_id, raw FROM samples WHERE sample_id IN (SELECT unnest($ids))", params={"ids": list(raw_for)}).to_arrow_table()
    position = pc.index_in(inputs.column("sample_id"), value_set=raw.column("sample_id"))
    records = pc.take(raw.column("raw"), position)
    return inputs.set_column(INPUTS_SCHEMA.get_field_index("raw"), "raw", records.cast(pa.string()))


def version_inputs(current: pa.Table, pool_ids: list[str], weights: np.ndarray, fill: float, selected_ids: list[str]) -> pa.Table:
    """``current`` (from :func:`current_inputs`) as a version's snapshot: members first in rank
    order, each pool sample with the weight the selection used and its origin; raw record, format
    and original id of members only. Samples left out of the pool (failed tagging) keep their own
    score, which the selection did not use (their tag status says so)."""
    table, order = snapshot_rows(current, pool_ids, weights, fill, selected_ids)
    return table.take(order)


def snapshot_rows(current: pa.Table, pool_ids: list[str], weights: np.ndarray, fill: float, selected_ids: list[str]) -> tuple[pa.Table, pa.Array]:
    """:func:`version_inputs` as its rows (in ``current``'s order) and the order to write them in."""
    ids = current.column("sample_id")
    in_pool = pc.index_in(ids, value_set=pa.array(pool_ids, pa.string()))
    used = pc.take(pa.array(np.asarray(weights, np.float64)), in_pool) if len(pool_ids) else pa.nulls(len(ids), pa.float64())
    weight = pc.if_else(pc.is_valid(in_pool), used, current.column("weight"))
    origin = pc.if_else(
        pc.and_(pc.is_valid(in_pool), pc.is_null(current.column("weight_origin"))),
        f"no score: the pool median {fill:.6g}",
        current.column("weight_origin"),
    )
    rank = pc.add(pc.index_in(ids, value_set=pa.array(selected_ids, pa.string())), 1).cast(pa.int32())
    member = pc.is_valid(rank).combine_chunks()
    table = current.set_column(INPUTS_SCHEMA.get_field_index("rank"), "rank", rank)
    table = table.set_column(INPUTS_SCHEMA.get_field_index("weight"), "weight", weight)
    table = table.set_column(INPUTS_SCHEMA.get_field_index("weight_origin"), "weight_origin", origin)
    for name in ("source_format", "original_id", "raw"):
        column = table.column(name)
        table = table.set_column(INPUTS_SCHEMA.get_field_index(name), name, pc.if_else(member, column, pa.nulls(len(column), pa.string())))
    # members by rank, then the others by sample_id: the others keep their order when ``current`` is
    # already sorted by sample_id (current_inputs, LineageRows.by_sample_id), else they are sorted
    members = pc.indices_nonzero(member)
    members = members.take(pc.sort_indices(pc.take(rank, members)))
    others = pc.indices_nonzero(pc.invert(member))
    if not is_sorted(ids):
        others = others.take(pc.sort_indices(pc.take(ids, others)))
    return table.cast(INPUTS_SCHEMA), pa.concat_arrays([members, others])


def is_sorted(values: pa.ChunkedArray | pa.Array) -> bool:
    """Whether ``values`` are in strictly ascending order (sample ids: distinct)."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    return len(values) < 2 or bool(pc.all(pc.less(values.slice(0, len(values) - 1), values.slice(1))).as_py())


def by_sample_id(table: pa.Table) -> pa.Table:
    return table.take(pc.sort_indices(table, [("sample_id", "ascending")]))


class LineageRows:
    """Every sample's inputs as a selection loaded them (:data:`INPUTS_SCHEMA`, no raw record), to be
    read in sample_id order: sorted in a thread once :meth:`sort_in_background` is called (Arrow's
    sort and take hold no GIL, so the sort runs on a second core while the greedy runs). Only the
    sorted copy is kept."""

    def __init__(self, table: pa.Table):
        self._table: pa.Table | None = table
        self._sorted: Future[pa.Table] | None = None

    def sort_in_background(self) -> None:
        if self._sorted is None:
            table, self._table = self._table, None  # the sorted copy replaces it
            executor = ThreadPoolExecutor(1)
            self._sorted = executor.submit(by_sample_id, table)
            executor.shutdown(wait=False)

    def by_sample_id(self) -> pa.Table:
        self.sort_in_background()
        assert self._sorted is not None
        return self._sorted.result()


def write_inputs(path: Path, table: pa.Table, facts: dict, order: pa.Array | None = None) -> Path:
    """The snapshot (its rows in ``order``, when given: reordered a batch at a time) with the
    version-level ``facts`` (JSON) in the file's key-value metadata."""
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(facts, sort_keys=True, default=str).encode()})
    return write_parquet_atomic(table, path) if order is None else write_rows_atomic(table, order, path)


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


def _score(row: dict) -> tuple[float | None, str | None]:
    """A sample's own quality score and its origin (None, None: it had none, whatever fill it got)."""
    origin = row["weight_origin"] or ""
    return (row["weight"], origin) if origin.startswith(("quality_scores (", IMPORTED_ORIGIN)) else (None, None)


def input_changes(then: dict, now: dict | None, runs_then: dict | None = None, runs_now: dict | None = None) -> dict:
    """What differs between a sample's inputs at a version (``then``) and now (``now``; None: the
    sample is no longer in the pool), field by field with before/after, the run that made the
    current value and the code versions (``runs_*``: {asset: {run_id, data_version, code_version}}
    of the sample's shard)."""
    if now is None:
        return {"removed_from_pool": f"shard {then['shard']} no longer holds this sample"}
    changes = {}
    if (then["tags"], then["tag_status"], then["tagger"]) != (now["tags"], now["tag_status"], now["tagger"]):
        changes["tags"] = {
            "before": then["tags"],
            "after": now["tags"],
            "tagger_before": then["tagger"],
            "tagger_after": now["tagger"],
            "status_before": then["tag_status"],
            "status_after": now["tag_status"],
        }
    if _score(then) != _score(now):
        changes["quality"] = {
            "score_before": _score(then)[0],
            "score_after": _score(now)[0],
            "scorer_before": _score(then)[1],
            "scorer_after": _score(now)[1],
        }
    if then["raw"] is not None and now["raw"] is not None and then["raw"] != now["raw"]:
        changes["raw_record"] = {
            "sha256_before": raw_sha256(then["raw"]),
            "sha256_after": raw_sha256(now["raw"]),
            "file_sha256_before": then["file_sha256"],
            "file_sha256_after": now["file_sha256"],
            "line_before": then["line_no"],
            "line_after": now["line_no"],
        }
    if then["embedding_model"] != now["embedding_model"]:
        changes["embedding_model"] = {"before": then["embedding_model"], "after": now["embedding_model"]}
    for field, change in changes.items():
        asset = CHANGED_BY[field]
        then_run, now_run = (runs_then or {}).get(asset) or {}, (runs_now or {}).get(asset) or {}
        change["changed_by_run"] = now["ingest_run_id"] if asset == "raw_pool" else now_run.get("run_id")
        change["run_at_version"] = then["ingest_run_id"] if asset == "raw_pool" else then_run.get("run_id")
        # the asset's code version: the tagger's, scorer's or embedder's full version hash
        change["code_version_before"], change["code_version_after"] = then_run.get("code_version"), now_run.get("code_version")
    return changes


def member_changes(previous: pa.Table, previous_facts: dict, current: pa.Table, current_facts: dict) -> list[dict]:
    """For each member of a previous version, what changed in its inputs since (empty ones left out)."""
    then_members = previous.filter(pc.is_valid(previous.column("rank")))
    now_of = {row["sample_id"]: row for row in current.filter(pc.is_in(current.column("sample_id"), value_set=then_members.column("sample_id"))).to_pylist()}
    shards_then, shards_now = previous_facts["shards"], current_facts["shards"]
    out = []
    for then in then_members.to_pylist():
        now = now_of.get(then["sample_id"])
        changes = input_changes(then, now, shards_then.get(then["shard"]), shards_now.get(now["shard"]) if now else None)
        if changes:
            out.append({"sample_id": then["sample_id"], "rank": then["rank"], **changes})
    return out


def upstream_changes(previous_facts: dict, current_facts: dict) -> dict:
    """The global (unpartitioned) upstream assets materialized again between two versions' facts,
    with the data versions and runs before and after. A run with the same data version is listed
    too: Dagster's default data version hashes code and inputs, not run config (``label_graph``'s
    tau), so only the version's own snapshot can say whether the content moved."""
    then, now = previous_facts["inputs"], current_facts["inputs"]
    return {
        asset: {
            "data_version_before": then[asset]["data_version"],
            "data_version_after": now[asset]["data_version"],
            "same_data_version": then[asset]["data_version"] == now[asset]["data_version"],
            "run_at_version": then[asset]["run_id"],
            "changed_by_run": now[asset]["run_id"],
        }
        for asset in sorted(set(then) & set(now))
        if asset not in SHARD_INPUT_ASSETS and (then[asset]["run_id"], then[asset]["data_version"]) != (now[asset]["run_id"], now[asset]["data_version"])
    }


def changes_summary(changes: list[dict], previous_version: int, upstream: dict | None = None) -> list[dict]:
    """One row per (field, before -> after, run) with the number of previous members affected; then
    one row per global upstream asset that changed (``upstream``, from :func:`upstream_changes`)."""
    counts: dict[tuple, int] = {}
    for change in changes:
        for field in ("tags", "quality", "raw_record", "embedding_model", "removed_from_pool"):
            if field not in change:
                continue
            detail = change[field]
            if field == "tags":
                key = (field, f"tagger {detail['tagger_before']} -> {detail['tagger_after']}", detail["changed_by_run"])
            elif field == "quality":
                key = (field, f"scorer {detail['scorer_before']} -> {detail['scorer_after']}", detail["changed_by_run"])
            elif field == "raw_record":
                key = (field, f"shard file {detail['file_sha256_before'][:12]} -> {detail['file_sha256_after'][:12]}", detail["changed_by_run"])
            elif field == "embedding_model":
                key = (field, f"{detail['before']} -> {detail['after']}", detail["changed_by_run"])
            else:
                key = (field, detail, None)
            counts[key] = counts.get(key, 0) + 1
    members = f"members of v{previous_version}"
    rows = [
        {"input": field, "change": what, "changed by run": run or "", members: n}
        for (field, what, run), n in sorted(counts.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] or ""))
    ]
    return rows + [
        {
            "input": asset,
            "change": "materialized again, same data version"
            if c["same_data_version"]
            else f"data version {(c['data_version_before'] or '')[:12]} -> {(c['data_version_after'] or '')[:12]}",
            "changed by run": c["changed_by_run"],
            members: "all",
        }
        for asset, c in (upstream or {}).items()
    ]
