"""The catalog's memory-saving reads (issue 18): ``fetch_apart`` (a query in a DuckDB session of its
own, built with the same views) and ``sample_copies`` (the ``samples`` copy of a few ids, ranked
among their rows only). Real shards ingested by the project, real Parquet, real DuckDB."""

import json

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from mig_assets.core.ingest.shards import ingest_shard
from mig_assets.core.selection.lineage import inputs_sql
from mig_assets.core.store.catalog import fetch_apart, open_catalog, sample_copies
from mig_assets.core.store.layout import COPY_ORDER, WarehouseLayout
from mig_assets.core.store.parquet import write_imported_marker, write_shard_rows
from tests.conftest import MIG_FIXTURES

P2K = (MIG_FIXTURES / "p2k.jsonl").read_text().splitlines()[:40]
SHARD_ORDER = ["a.jsonl", "b.jsonl", "c.jsonl", "0.jsonl"]  # registration order


def sample_id_of(layout, shard: str, line_no: int) -> str:
    table = pq.read_table(layout.shard_file("raw_pool", shard), columns=["sample_id", "line_no"])
    return table.filter(pc.equal(table.column("line_no"), line_no)).column("sample_id")[0].as_py()


def write_shard(layout, name: str, lines: list[str], run_id: str):
    path = layout.incoming_dir / name
    path.write_text("\n".join(lines) + "\n")
    return ingest_shard(layout, layout.shard_key(path), path, run_id=run_id)


def tag_and_score(layout, shard: str, failed: tuple[str, ...] = (), scored: bool = True) -> None:
    """The shard's imported tags and, when ``scored``, its imported quality rows, marked as the
    imported backends mark them (``failed``: a tag file of those rows with those ids' status set to
    failed instead, as a tagger that failed on them writes it)."""
    write_imported_marker(layout, "atomic_tags", shard, {"run_id": "test-run"})
    if failed:
        with open_catalog(layout) as con:
            tags = con.sql("SELECT * FROM atomic_tags WHERE shard = ?", params=[shard]).to_arrow_table()
        is_failed = pc.is_in(tags.column("sample_id"), value_set=pa.array(failed, pa.string()))
        tags = tags.set_column(tags.schema.get_field_index("status"), "status", pc.if_else(is_failed, "failed", tags.column("status")))
        write_shard_rows(layout, "atomic_tags", shard, tags)
    if scored:
        write_imported_marker(layout, "quality_scores", shard, {"run_id": "test-run"})


def build_pool(layout, *, replaced: bool) -> dict[str, str]:
    """Three shards: ``a`` (P2K 0-9, line 11 a copy of its line 1), ``b`` (P2K 6-13: its first four
    rows duplicates of ``a``'s), ``c`` (P2K 8, a second duplicate of it, then P2K 20-23); ``a`` and
    ``b`` tagged and scored, ``c`` tagged only (one tag failed). ``replaced``: ``a`` ingested again
    without P2K 6-8, so that ``b``'s duplicates of them become their copies (P2K 8: ``b``'s, the
    first shard of its two duplicates). ``0`` (P2K 2, a duplicate of a's line 3, then P2K 30),
    ingested last: its name sorts first, but a kept copy goes before a duplicate. Returns a few
    sample ids by role."""
    write_shard(layout, "a.jsonl", P2K[0:10] + [P2K[0]], "run-a")
    write_shard(layout, "b.jsonl", P2K[6:14], "run-b")
    write_shard(layout, "c.jsonl", P2K[8:9] + P2K[20:24], "run-c")
    write_shard(layout, "0.jsonl", [P2K[2], P2K[30]], "run-0")
    ids = {
        "in_shard_duplicate": sample_id_of(layout, "a.jsonl", 1),
        "duplicated_in_b": sample_id_of(layout, "a.jsonl", 7),
        "duplicated_in_b_and_c": sample_id_of(layout, "a.jsonl", 9),
        "stays_in_a": sample_id_of(layout, "a.jsonl", 10),
        "only_in_c": sample_id_of(layout, "c.jsonl", 2),
        "duplicated_in_0": sample_id_of(layout, "a.jsonl", 3),
    }
    if replaced:
        write_shard(layout, "a.jsonl", P2K[0:6] + [P2K[9], P2K[0]], "run-a2")
    tag_and_score(layout, "a.jsonl")
    tag_and_score(layout, "b.jsonl")
    tag_and_score(layout, "c.jsonl", failed=(ids["only_in_c"],), scored=False)
    tag_and_score(layout, "0.jsonl")
    return ids


def rows_by_id(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda row: row["sample_id"])


def test_fetch_apart_returns_what_the_session_returns_for_views_over_views(layout):
    build_pool(layout, replaced=True)
    con = open_catalog(layout)
    # a view over samples, itself over raw_pool_rows: listed before both, so it is created once they are
    con.execute("CREATE VIEW a_kept_per_shard AS SELECT shard, count(*) AS n FROM samples GROUP BY shard")
    sql = "SELECT sample_id, shard, line_no, duplicate_of, source_file FROM samples WHERE shard = $shard ORDER BY sample_id"
    for shard in SHARD_ORDER:
        apart = fetch_apart(con, sql, {"shard": shard})
        assert apart.num_rows > 0 and apart.equals(con.sql(sql, params={"shard": shard}).to_arrow_table())
    counts = "SELECT * FROM a_kept_per_shard ORDER BY shard"
    assert fetch_apart(con, counts).equals(con.sql(counts).to_arrow_table())
    # a: 8 lines, one a copy of its first; b: the three P2K rows a gave up, and four of its own; c: four; 0: one
    assert {row["shard"]: row["n"] for row in fetch_apart(con, counts).to_pylist()} == {"a.jsonl": 7, "b.jsonl": 7, "c.jsonl": 4, "0.jsonl": 1}


def test_fetch_apart_closes_its_session_and_leaves_the_catalog_as_it_was(layout, monkeypatch):
    build_pool(layout, replaced=False)
    con = open_catalog(layout)
    views = con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal ORDER BY view_name").fetchall()
    opened = []
    connect = duckdb.connect

    def recording_connect(*args, **kwargs):
        opened.append(connect(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(duckdb, "connect", recording_connect)
    table = fetch_apart(con, "SELECT count(*) AS n FROM samples")
    assert table.column("n").to_pylist() == [19]  # 10 in a (11 lines, one a copy of its first), 4 in b (4 more duplicates), 4 in c, 1 in 0
    assert len(opened) == 1
    with pytest.raises(duckdb.ConnectionException):
        opened[0].execute("SELECT 1")  # closed once fetched
    assert con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal ORDER BY view_name").fetchall() == views


@pytest.mark.timeout(60)
def test_fetch_apart_raises_duckdbs_error_for_what_no_view_provides(layout):
    build_pool(layout, replaced=False)
    con = open_catalog(layout)
    with pytest.raises(duckdb.CatalogException, match="no_such_view"):
        fetch_apart(con, "SELECT * FROM no_such_view")
    # a view over a table the session holds: the table is not copied, so that view can never be
    # created apart; the retries stop (no going round forever), a query that does not read the
    # view still runs, and one that reads it gets DuckDB's error
    con.execute("CREATE TABLE scratch AS SELECT 1 AS x")
    con.execute("CREATE VIEW over_scratch AS SELECT * FROM scratch")
    assert fetch_apart(con, "SELECT count(*) AS n FROM samples").column("n").to_pylist() == [con.sql("SELECT count(*) FROM samples").fetchall()[0][0]]
    with pytest.raises(duckdb.CatalogException, match="over_scratch"):
        fetch_apart(con, "SELECT * FROM over_scratch")


@pytest.mark.parametrize("replaced", [False, True], ids=["kept copies", "kept copy's shard replaced"])
def test_sample_copies_are_the_samples_views_rows(layout, replaced):
    ids = build_pool(layout, replaced=replaced)
    con = open_catalog(layout)
    columns = "sample_id, shard, line_no, duplicate_of, raw"
    wanted = [ids[role] for role in ("in_shard_duplicate", "duplicated_in_b", "duplicated_in_b_and_c", "stays_in_a", "only_in_c", "duplicated_in_0")]
    copies = sample_copies(con, [*wanted, "not-a-sample-id"], columns)
    assert copies.column_names == ["sample_id", "shard", "line_no", "duplicate_of", "raw"]
    expected = con.sql(f"SELECT {columns} FROM samples WHERE sample_id IN (SELECT unnest($ids))", params={"ids": wanted}).to_arrow_table()
    assert rows_by_id(copies) == rows_by_id(expected) and sorted(copies.column("sample_id").to_pylist()) == sorted(wanted)
    shard_of = {row["sample_id"]: (row["shard"], row["duplicate_of"] is None) for row in copies.to_pylist()}
    assert shard_of[ids["stays_in_a"]] == ("a.jsonl", True) and shard_of[ids["in_shard_duplicate"]] == ("a.jsonl", True)
    assert shard_of[ids["duplicated_in_0"]] == ("a.jsonl", True)  # not 0's duplicate, whose shard sorts first
    if replaced:  # the duplicates stand in for the copies ``a`` no longer holds: b's, the first shard of two
        assert shard_of[ids["duplicated_in_b"]] == ("b.jsonl", False) and shard_of[ids["duplicated_in_b_and_c"]] == ("b.jsonl", False)
    else:
        assert shard_of[ids["duplicated_in_b"]] == ("a.jsonl", True) and shard_of[ids["duplicated_in_b_and_c"]] == ("a.jsonl", True)
    # each raw record is its copy's own line of its shard's file
    for row in copies.to_pylist():
        assert row["raw"] == (layout.incoming_dir / row["shard"]).read_text().splitlines()[row["line_no"] - 1]
    assert sample_copies(con, ["not-a-sample-id"], columns).num_rows == 0 and sample_copies(con, [], columns).num_rows == 0


@pytest.mark.parametrize("replaced", [False, True], ids=["kept copies", "kept copy's shard replaced"])
def test_samples_holds_each_ids_first_row_in_copy_order(layout, replaced):
    """The view reads the kept rows as they are and ranks only the duplicates without one: the same
    rows as ranking every row of the id in COPY_ORDER and keeping the first."""
    ids = build_pool(layout, replaced=replaced)
    con = open_catalog(layout)
    ranked = con.sql(
        f"SELECT * FROM raw_pool_rows QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY {COPY_ORDER}) = 1 ORDER BY sample_id"
    ).to_arrow_table()
    samples = con.sql("SELECT * FROM samples ORDER BY sample_id").to_arrow_table()
    assert samples.num_rows == 19 and samples.equals(ranked)
    # the duplicates standing in for a copy: none, or the three P2K rows ``a`` gave up (b's copies)
    stand_ins = {sid: shard for sid, shard in con.execute("SELECT sample_id, shard FROM samples WHERE duplicate_of IS NOT NULL").fetchall()}
    assert len(stand_ins) == (3 if replaced else 0) and set(stand_ins.values()) <= {"b.jsonl"}
    assert (ids["duplicated_in_b"] in stand_ins and ids["duplicated_in_b_and_c"] in stand_ins) == replaced


def pool_sql(con) -> str:
    """The pool's query with the columns ``load_pool`` adds (and the shard facts it leaves out)."""
    return inputs_sql(con, ", s.imported_quality, s.n_tokens_est, s.q_score AS score")


def test_annotations_read_in_place_give_the_rows_the_joined_views_give(layout, monkeypatch):
    build_pool(layout, replaced=True)  # b's duplicates of a's dropped rows stand in for them: no tag row of theirs
    bare = json.loads(P2K[31])
    bare.pop("annotation")
    tags_only = json.loads(P2K[32])
    tags_only["annotation"].pop("deita")
    write_shard(layout, "d.jsonl", [json.dumps(bare), json.dumps(tags_only), P2K[33]], "run-d")
    assert not layout.annotations_in_place()  # c's tag file (one failed) and no scores of c
    layout.shard_file("atomic_tags", "c.jsonl").unlink()
    for shard in ("c.jsonl", "d.jsonl"):
        tag_and_score(layout, shard)
    assert layout.annotations_in_place()
    with open_catalog(layout) as con:
        in_place, schema_in_place = rows_by_id(con.sql(pool_sql(con)).to_arrow_table()), con.sql(f"DESCRIBE ({pool_sql(con)})").fetchall()
        monkeypatch.setattr(WarehouseLayout, "annotations_in_place", lambda self: False)
        joined, schema_joined = rows_by_id(con.sql(pool_sql(con)).to_arrow_table()), con.sql(f"DESCRIBE ({pool_sql(con)})").fetchall()
    assert in_place == joined and schema_in_place == schema_joined
    by_status = {(row["tag_status"], row["scorer"], row["weight_origin"]) for row in in_place}
    assert ("no_annotation", None, None) in by_status  # no annotation: no tags, no score
    assert ("ok", None, None) in by_status and ("ok", "imported Deita annotations", "quality_scores (imported Deita annotations)") in by_status
    assert any(row["tag_status"] is None for row in in_place)  # a duplicate standing in for a dropped kept copy


def test_a_file_of_rows_or_a_missing_marker_means_the_views_are_joined(layout):
    build_pool(layout, replaced=False)
    layout.shard_file("atomic_tags", "c.jsonl").unlink()
    tag_and_score(layout, "c.jsonl")
    assert layout.annotations_in_place()
    (layout.shard_file("quality_scores", "b.jsonl").parent / "imported.json").unlink()
    assert not layout.annotations_in_place()  # b has no scores: its rows join to none
    tag_and_score(layout, "b.jsonl")
    with open_catalog(layout) as con:
        rows = con.sql("SELECT * FROM atomic_tags WHERE shard = 'b.jsonl'").to_arrow_table()
    write_shard_rows(layout, "atomic_tags", "b.jsonl", rows)  # a tagger's file: it takes precedence
    assert not layout.annotations_in_place()
