"""The DuckDB catalog: a private session with every view over the warehouse's Parquet
(:func:`open_catalog`), the global tables written as Parquet through it (:func:`replace_table`,
:func:`insert_table`), and the shared ``mig.duckdb`` that users query with the plain ``duckdb`` CLI
(:func:`publish_catalog`). Where the files live and what each view reads: core/store/layout.py.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from mig_assets.core.store.layout import COPY_ORDER, WarehouseLayout, sql_literal, table_view_sql
from mig_assets.core.store.parquet import write_parquet_atomic

TABLES_DIR_VARIABLE = "mig_tables_dir"
CATALOG_INFO = "catalog_views"  # in mig.duckdb: the view definitions it was built with


def has_relation(con, name: str) -> bool:
    """Whether the catalog has a table or a view called ``name``."""
    return bool(
        con.execute(
            "SELECT count(*) FROM (SELECT table_name AS name FROM duckdb_tables() UNION ALL SELECT view_name FROM duckdb_views()) WHERE name = ?",
            [name],
        ).fetchall()[0][0]
    )


def open_catalog(layout: WarehouseLayout):
    """A private in-memory DuckDB with every catalog view over the warehouse's Parquet.

    Assets and the CLI read and write through it, never through the shared ``mig.duckdb`` (which a
    user's ``duckdb -readonly`` session may hold): global tables are written with
    :func:`replace_table` / :func:`insert_table`, which need the tables folder recorded here.
    """
    import duckdb

    salvage_legacy_tables(layout)
    con = duckdb.connect()
    con.execute(f"SET VARIABLE {TABLES_DIR_VARIABLE} = ?", [str(layout.tables_dir)])
    layout.refresh_catalog(con)
    return con


def fetch_apart(con, sql: str, params: dict | None = None):
    """``sql``'s result as an Arrow table, run in a session of its own over ``con``'s views and
    closed once fetched: DuckDB holds a query's working memory (the hash tables of its joins) until
    its database closes, and a selection goes on to use that memory in Arrow
    (at 939,000 samples the pool's query left about 550 MB behind in a session kept open, measured
    when ``samples`` still ranked every row)."""
    import duckdb

    views = con.execute("SELECT sql FROM duckdb_views() WHERE NOT internal AND database_name = current_database()").fetchall()
    with duckdb.connect() as apart:
        pending = [create for (create,) in views]
        while pending:  # a view binds the views it reads when created: create those first
            failed = []
            for create in pending:
                try:
                    apart.execute(create)
                except duckdb.Error:
                    failed.append(create)
            if len(failed) == len(pending):
                break  # views over what is not there (a table of con, a file gone): an error only if sql reads one
            pending = failed
        return apart.sql(sql, params=params).to_arrow_table()


def sample_copies(con, sample_ids, columns: str):
    """``columns`` of the ``samples`` rows of ``sample_ids`` as an Arrow table (no order): the copy
    the view holds, chosen among those ids' rows alone (the view looks up every kept id of the pool
    to find the duplicates that stand in for a copy), read apart (:func:`fetch_apart`: the scan of every
    row's ``raw`` or ``messages`` leaves its buffers behind in a session kept open)."""
    return fetch_apart(
        con,
        f"SELECT {columns} FROM raw_pool_rows WHERE sample_id IN (SELECT unnest($ids)) "
        f"QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY {COPY_ORDER}) = 1",
        {"ids": list(sample_ids)},
    )


def warehouse_dir_of(con) -> Path:
    """The warehouse folder of ``con``: a session opened by :func:`open_catalog`, or a connection
    to the catalog file itself."""
    [(tables,)] = con.execute(f"SELECT getvariable('{TABLES_DIR_VARIABLE}')").fetchall()
    if tables is not None:
        return Path(tables).parent
    [(path,)] = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()
    return Path(path).parent


def replace_table(con, name: str, table) -> Path:
    """Replace global table ``name`` by the rows of an Arrow table: ``tables/<name>/part-0.parquet``
    (staging file + rename), exposed as a view in ``con``."""
    folder = _table_folder(con, name)
    path = _write_rows(con, "SELECT * FROM {source}", table, folder / "part-0.parquet")
    for stale in folder.glob("part-*.parquet"):
        if stale != path:
            stale.unlink()
    _expose(con, name, folder)
    return path


def insert_table(con, name: str, table, part: str | None = None) -> Path:
    """Append the rows of an Arrow table to global table ``name`` as one more Parquet file.

    As with ``INSERT INTO name SELECT``, columns are matched by position and cast to the types of
    ``name`` when it exists (a view over earlier files, or a table declared in ``con``). ``part``
    names the file, so that a retried write (same selection version) replaces its rows instead of
    adding them twice; default: a unique name.
    """
    folder = _table_folder(con, name)
    select = "SELECT * FROM {source}"
    if has_relation(con, name):
        target = con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {name})").fetchall()
        if len(target) != table.num_columns:
            raise ValueError(f"{name} has {len(target)} columns, the rows to insert have {table.num_columns}: {table.column_names}")
        select = (
            "SELECT "
            + ", ".join(f'CAST("{source}" AS {column_type}) AS "{column}"' for source, (column, column_type) in zip(table.column_names, target))
            + " FROM {source}"
        )
    path = _write_rows(con, select, table, folder / f"part-{part or f'{time.time_ns()}-{os.getpid()}'}.parquet")
    _expose(con, name, folder)
    return path


def drop_table(con, name: str) -> None:
    """Remove global table ``name``: its Parquet folder and its view in ``con``."""
    shutil.rmtree(_table_folder(con, name), ignore_errors=True)
    if has_relation(con, name):
        con.execute(f"DROP {_relation_kind(con, name)} {name}")


def _table_folder(con, name: str) -> Path:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"{name!r} is not a table name")
    [(tables_dir,)] = con.execute(f"SELECT getvariable('{TABLES_DIR_VARIABLE}')").fetchall()
    if tables_dir is None:
        raise ValueError("global tables are written through a connection from open_catalog (Warehouse.connect)")
    return Path(tables_dir) / name


def _write_rows(con, select: str, table, path: Path) -> Path:
    """``COPY (select) TO path`` through a staging file and a rename (DuckDB's writer keeps JSON
    and time zone types, so a table reads back with the types it was declared with)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".staging-{os.getpid()}-{path.name}")
    source = "arrow_source"
    con.register(source, table)
    try:
        con.execute(f"COPY ({select.format(source=source)}) TO {sql_literal(str(staging))} (FORMAT parquet, COMPRESSION zstd)")
    finally:
        con.unregister(source)
    os.replace(staging, path)
    return path


def _relation_kind(con, name: str) -> str:
    is_table = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]).fetchall()[0][0]
    return "TABLE" if is_table else "VIEW"


def _expose(con, name: str, folder: Path) -> None:
    """Replace ``name`` in ``con`` (a declared empty table, or the view) by the view over its files."""
    if has_relation(con, name) and _relation_kind(con, name) == "TABLE":
        con.execute(f"DROP TABLE {name}")
    con.execute(f"CREATE OR REPLACE VIEW {name} AS {table_view_sql(folder)}")


def publish_catalog(layout: WarehouseLayout) -> str:
    """Make the shared ``mig.duckdb`` hold exactly the current view definitions; returns what it did:
    ``unchanged``, ``updated`` (a view added or removed), ``created`` (no file) or ``rebuilt`` (unreadable).

    The shared file is never opened for writing: a new file is built beside it and renamed over it.
    A reader keeps the file it opened (its lock is on that file), so readers never block writers,
    and a missing, truncated or zeroed file is simply replaced. Nothing is lost with it: every view
    reads Parquet under the warehouse.
    """
    import duckdb

    path = layout.duckdb_path
    published = None
    if path.exists():
        try:
            with duckdb.connect(str(path), read_only=True) as con:
                if has_relation(con, CATALOG_INFO):
                    published = dict(con.execute(f"SELECT view, definition FROM {CATALOG_INFO}").fetchall())
        except duckdb.Error:
            published = None  # unreadable (truncated, zeroed, not DuckDB): rebuilt below
    wanted = layout.view_definitions()
    if published == wanted:
        return "unchanged"
    staging = path.with_name(f".{path.name}.staging-{os.getpid()}")
    staging.unlink(missing_ok=True)
    with duckdb.connect(str(staging)) as con:
        for view, sql in wanted.items():
            con.execute(f"CREATE VIEW {view} AS {sql}")
        con.execute(f"CREATE TABLE {CATALOG_INFO} (view VARCHAR, definition VARCHAR)")
        if wanted:
            con.executemany(f"INSERT INTO {CATALOG_INFO} VALUES (?, ?)", list(wanted.items()))
    path.with_name(path.name + ".wal").unlink(missing_ok=True)  # a write-ahead log belongs to the file being replaced
    outcome = "created" if not path.exists() else "rebuilt" if published is None else "updated"
    os.replace(staging, path)
    return outcome


def salvage_legacy_tables(layout: WarehouseLayout) -> list[str]:
    """Copy the tables of an old-style catalog (global tables stored inside ``mig.duckdb``) to
    ``tables/<name>/`` before the first session of a warehouse without a tables folder, so that
    upgrading loses no selection history. Returns the tables copied."""
    import duckdb

    if layout.tables_dir.exists() or not layout.duckdb_path.exists():
        return []
    names: list[str] = []
    try:
        with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
            names = [n for (n,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE NOT internal").fetchall() if n != CATALOG_INFO]
            for name in names:
                write_parquet_atomic(con.sql(f"SELECT * FROM {name}").to_arrow_table(), layout.tables_dir / name / "part-0.parquet")
    except duckdb.Error:
        pass  # unreadable: nothing to copy; publish_catalog replaces the file
    layout.tables_dir.mkdir(parents=True, exist_ok=True)
    return names
