"""The lineage rows a selection keeps while it runs (issue 18): ``compact_lineage`` (shard facts and
few-valued columns as dictionaries), ``fill_where``, ``LineageRows.set_aside`` / ``by_sample_id``
and the pool's ``lineage_rows`` (``PoolArrays.without``). Shards ingested by the project, real
Parquet, real DuckDB (the pool of tests/core/test_catalog_reads.py)."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from mig_assets.core.selection.inputs import load_pool
from mig_assets.core.selection.lineage import FEW_VALUES, INPUTS_SCHEMA, SHARD_FACTS, LineageRows, compact_lineage, fill_where, inputs_sql
from mig_assets.core.store.catalog import fetch_apart, open_catalog
from tests.core.test_catalog_reads import SHARD_ORDER, build_pool, rows_by_id


def plain_and_compact(con, chunks: int = 1) -> tuple[pa.Table, pa.Table]:
    """The pool's rows from :func:`inputs_sql` as they are, and :func:`compact_lineage`'s of the
    same query without the shard facts (its rows cut into ``chunks`` record batches first)."""
    plain = con.sql(inputs_sql(con)).to_arrow_table().cast(INPUTS_SCHEMA)
    rows = fetch_apart(con, inputs_sql(con, shard_facts=False))
    if chunks > 1:
        step = -(-rows.num_rows // chunks)
        rows = pa.concat_tables([rows.slice(start, step) for start in range(0, rows.num_rows, step)])
    return plain, compact_lineage(con, rows)


@pytest.mark.parametrize("replaced", [False, True], ids=["kept copies", "kept copy's shard replaced"])
def test_compact_lineage_holds_the_plain_rows_values_in_dictionaries(layout, replaced):
    build_pool(layout, replaced=replaced)
    con = open_catalog(layout)
    plain, compact = plain_and_compact(con, chunks=3)
    assert compact.column_names == INPUTS_SCHEMA.names
    for name in SHARD_FACTS + FEW_VALUES:
        assert pa.types.is_dictionary(compact.schema.field(name).type), name
    for name in SHARD_FACTS:  # one value per shard, not one per row
        assert all(len(chunk.dictionary) == len(SHARD_ORDER) for chunk in compact.column(name).chunks), name
    decoded = compact.cast(INPUTS_SCHEMA)
    assert decoded.num_rows == plain.num_rows == con.sql("SELECT count(*) FROM samples").fetchall()[0][0]
    assert rows_by_id(decoded) == rows_by_id(plain)
    # the values compared are not all alike: every shard's own facts, two weight origins, a failed tag
    facts = {(row["shard"], row["source_file"], row["ingest_run_id"]) for row in decoded.to_pylist()}
    run_a = "run-a2" if replaced else "run-a"
    assert facts == {(shard, f"incoming/{shard}", f"run-{shard[0]}") for shard in ("b.jsonl", "c.jsonl", "0.jsonl")} | {("a.jsonl", "incoming/a.jsonl", run_a)}
    shas = con.sql("SELECT shard, file_sha256 FROM shards").fetchall()
    assert {(row["shard"], row["file_sha256"]) for row in decoded.to_pylist()} == set(shas) and len(set(dict(shas).values())) == len(SHARD_ORDER)
    origins = set(decoded.column("weight_origin").to_pylist())
    assert {"quality_scores (imported Deita annotations)", "imported Deita annotation"} <= origins and "failed" in decoded.column("tag_status").to_pylist()


@pytest.mark.parametrize("column", ["source_file", "ingest_run_id"])
def test_compact_lineage_refuses_a_shard_with_two_values_of_a_shard_fact(layout, column):
    build_pool(layout, replaced=False)
    path = layout.shard_file("raw_pool", "b.jsonl")
    rows = pq.read_table(path)
    values = rows.column(column).to_pylist()
    values[2] = "incoming/elsewhere.jsonl" if column == "source_file" else "another-run"
    pq.write_table(rows.set_column(rows.schema.get_field_index(column), column, pa.array(values, pa.string())), path)
    con = open_catalog(layout)
    with pytest.raises(ValueError, match=r"b\.jsonl") as refused:
        compact_lineage(con, fetch_apart(con, inputs_sql(con, shard_facts=False)))
    assert not any(shard in str(refused.value) for shard in SHARD_ORDER if shard != "b.jsonl")


def test_fill_where_gives_the_same_values_for_plain_and_dictionary_columns():
    values = ["ok", None, "ok", "failed", "imported", None, "ok", "failed"]
    plain = pa.chunked_array([pa.array(values[:5], pa.string()), pa.array(values[5:], pa.string())])
    # two chunks with dictionaries of their own (parts encoded apart, then put in one column)
    dictionary = pa.chunked_array([pc.dictionary_encode(pa.array(values[:5], pa.string())), pc.dictionary_encode(pa.array(values[5:], pa.string()))])
    assert not dictionary.chunk(0).dictionary.equals(dictionary.chunk(1).dictionary)
    where = pa.array([True, True, False, False, True, False, True, False])
    for value in ("no score: the pool median 3.5", "ok"):
        expected = [value if hit else old for hit, old in zip(where.to_pylist(), values)]
        from_plain, from_dictionary = fill_where(plain, where, value), fill_where(dictionary, where, value)
        assert pa.types.is_dictionary(from_dictionary.type) and not pa.types.is_dictionary(from_plain.type)
        assert from_plain.to_pylist() == expected and from_dictionary.cast(pa.string()).to_pylist() == expected, value
    nowhere = pa.array([False] * len(values))
    assert fill_where(plain, nowhere, "x") is plain and fill_where(dictionary, nowhere, "x") is dictionary


def test_set_aside_maps_the_same_rows_back_and_leaves_no_file(layout, tmp_path):
    build_pool(layout, replaced=True)
    con = open_catalog(layout)
    _, compact = plain_and_compact(con, chunks=2)
    lineage = LineageRows(compact)
    folder = tmp_path / "selection_inputs"
    folder.mkdir()
    (folder / ".staging-999999999-lineage-1.arrow").write_bytes(b"left by a killed run")  # no such process
    allocated = pa.total_allocated_bytes()
    lineage.set_aside(folder)
    assert lineage.table is not compact and lineage.table.equals(compact)  # dictionary columns included
    assert lineage.table.schema == compact.schema and pa.types.is_dictionary(lineage.table.schema.field("tagger").type)
    assert list(folder.iterdir()) == []  # its own .staging-* file unlinked at once, a killed run's removed
    # read back from the mapping, not into Arrow's memory pool
    assert pa.total_allocated_bytes() - allocated < compact.nbytes / 2
    order = lineage.by_sample_id()
    ids = compact.column("sample_id").to_pylist()
    assert sorted(order.to_pylist()) == list(range(len(ids)))  # a permutation
    assert lineage.table.column("sample_id").take(order).to_pylist() == sorted(ids)


def test_pool_lineage_rows_follow_the_pool_through_without(layout):
    build_pool(layout, replaced=True)
    con = open_catalog(layout)
    pool, _, fill, failed, lineage = load_pool(con, None, SHARD_ORDER)
    assert failed == 1 and pool.lineage_rows is not None
    lineage_ids = lineage.column("sample_id")
    assert lineage_ids.take(pool.lineage_rows).to_pylist() == pool.sample_ids and len(pool.sample_ids) == lineage.num_rows - 1
    # the rows are the samples' own: their shard in input order and their weight (a sample without
    # one weighs the pool's median)
    assert [lineage.column("shard")[int(row)].as_py() for row in pool.lineage_rows] == sorted(
        (lineage.column("shard")[int(row)].as_py() for row in pool.lineage_rows), key=SHARD_ORDER.index
    )
    weights = lineage.column("weight").take(pool.lineage_rows).to_numpy(zero_copy_only=False)
    assert np.isnan(weights).sum() == 1 and np.array_equal(np.where(np.isnan(weights), fill, weights), pool.scores)
    dropped = set(pool.sample_ids[::3])
    smaller = pool.without(dropped)
    assert smaller.sample_ids == [sid for sid in pool.sample_ids if sid not in dropped]
    assert lineage_ids.take(smaller.lineage_rows).to_pylist() == smaller.sample_ids
    smaller_weights = lineage.column("weight").take(smaller.lineage_rows).to_numpy(zero_copy_only=False)
    assert np.array_equal(np.where(np.isnan(smaller_weights), fill, smaller_weights), smaller.scores)
    assert pool.without(set()) is pool
