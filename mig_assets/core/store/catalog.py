"""Where everything lives under ``MIG_HOME``, how shard files map to partition keys, and the
DuckDB catalog (views over the per-shard Parquet) that users query with the plain ``duckdb`` CLI.

Layout::

    MIG_HOME/pool/incoming/**         shard files dropped by users (one shard per file)
    MIG_HOME/warehouse/<asset>/shard=<key>/part-0.parquet
    MIG_HOME/warehouse/tables/<table>/part-*.parquet   global tables (selections, graph, tree, ...)
    MIG_HOME/warehouse/mig.duckdb     views only, rebuilt from the Parquet whenever needed
    MIG_HOME/exports/<selection>/<version>/
    MIG_HOME/targets/**               the default target set of target_profile (MIG_TARGET_PATH overrides)
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from pathlib import Path

from mig_assets.core.ingest.readers import is_supported
from mig_assets.core.store.parquet import write_parquet_atomic

SHARD_ASSETS = ("raw_pool", "quarantine", "shard_stats", "atomic_tags", "sample_embeddings", "quality_scores", "contamination")
CATALOG_VIEWS = {
    # every parsed row, kept or duplicate
    "raw_pool_rows": "SELECT * FROM read_parquet({raw_pool}, hive_partitioning = false, union_by_name = true)",
    # one row per sample_id: the kept copy, or a duplicate when the kept copy's shard changed since
    "samples": """
        SELECT * EXCLUDE (copy_rank) FROM (
            SELECT *, row_number() OVER (
                PARTITION BY sample_id ORDER BY duplicate_of IS NOT NULL, shard, line_no) AS copy_rank
            FROM raw_pool_rows)
        WHERE copy_rank = 1""",
    "duplicates": "SELECT * FROM raw_pool_rows WHERE duplicate_of IS NOT NULL",
    "quarantine": "SELECT * FROM read_parquet({quarantine}, hive_partitioning = false, union_by_name = true)",
    "shards": "SELECT * FROM read_parquet({shard_stats}, hive_partitioning = false, union_by_name = true)",
    "atomic_tags": "SELECT * FROM read_parquet({atomic_tags}, hive_partitioning = false, union_by_name = true)",
    "sample_embeddings": "SELECT * FROM read_parquet({sample_embeddings}, hive_partitioning = false, union_by_name = true)",
    "quality_scores": "SELECT * FROM read_parquet({quality_scores}, hive_partitioning = false, union_by_name = true)",
    # samples overlapping a benchmark item (core/curation/decontamination.py)
    "contamination": "SELECT * FROM read_parquet({contamination}, hive_partitioning = false, union_by_name = true)",
}
# global tables: one folder each; replaced tables hold part-0.parquet, histories one file per append
TABLES_DIR = "tables"
TABLES_DIR_VARIABLE = "mig_tables_dir"
CATALOG_INFO = "catalog_views"  # in mig.duckdb: the view definitions it was built with
VIEW_SOURCES = {
    "raw_pool_rows": "raw_pool",
    "quarantine": "quarantine",
    "shards": "shard_stats",
    "atomic_tags": "atomic_tags",
    "sample_embeddings": "sample_embeddings",
    "quality_scores": "quality_scores",
    "contamination": "contamination",
}


class ShardPathError(ValueError):
    """A file that cannot be a shard (outside the pool, unsupported type, key collision)."""


class WarehouseLayout:
    def __init__(self, mig_home: str | Path):
        self.home = Path(mig_home).expanduser().resolve()

    @property
    def pool_dir(self) -> Path:
        return self.home / "pool"

    @property
    def incoming_dir(self) -> Path:
        return self.pool_dir / "incoming"

    @property
    def warehouse_dir(self) -> Path:
        return self.home / "warehouse"

    @property
    def duckdb_path(self) -> Path:
        return self.warehouse_dir / "mig.duckdb"

    @property
    def exports_dir(self) -> Path:
        return self.home / "exports"

    def ensure(self) -> "WarehouseLayout":
        for folder in (self.incoming_dir, self.warehouse_dir, self.exports_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def tag_embeddings_file(self) -> Path:
        return self.warehouse_dir / "tag_embeddings" / "part-0.parquet"

    @property
    def knowledge_tree_dir(self) -> Path:
        return self.warehouse_dir / "knowledge_tree"

    def shard_file(self, asset: str, shard: str) -> Path:
        return self.warehouse_dir / asset / f"shard={shard}" / "part-0.parquet"

    def shard_files(self, asset: str) -> list[Path]:
        return sorted((self.warehouse_dir / asset).glob("shard=*/part-0.parquet"))

    def relative_source(self, path: Path) -> str:
        """The path an auditor can follow: relative to MIG_HOME/pool when inside it."""
        resolved = Path(path).resolve()
        try:
            return resolved.relative_to(self.pool_dir).as_posix()
        except ValueError:
            return str(resolved)

    def shard_key(self, path: str | Path) -> str:
        """Partition key of a shard file: its path under pool/incoming, made key- and path-safe.

        Raises :class:`ShardPathError` for a path (or symlink target) outside pool/incoming.
        """
        if Path(path).name.startswith("."):
            raise ShardPathError(f"{path}: a hidden file name (leading '.') is not a shard; rename it without the dot")
        try:
            resolved = Path(path).resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
            raise ShardPathError(f"{path}: cannot be resolved ({exc}); skipped") from exc
        incoming = self.incoming_dir.resolve()
        if not resolved.is_relative_to(incoming):
            raise ShardPathError(
                f"{path} is outside {incoming}: shards must live in MIG_HOME/pool/incoming "
                f"(resolved path {resolved}); use `mig-assets ingest FILE` to import a file from elsewhere"
            )
        if not is_supported(resolved):
            raise ShardPathError(f"{path}: unsupported file type (expected .jsonl, .json, .parquet, optionally .gz)")
        return shard_key_of(resolved.relative_to(incoming).as_posix())

    def discover_shards(self) -> tuple[dict[str, Path], list[str]]:
        """Supported files under pool/incoming by key, plus a problem line for each file skipped.

        Hidden files and partial downloads (``.tmp``, ``.part``) are skipped: writers should write
        under such a name and rename when done.
        """
        found: dict[str, Path] = {}
        problems: list[str] = []
        if not self.incoming_dir.exists():
            return found, problems
        for path in sorted(self.incoming_dir.rglob("*")):
            rel = path.relative_to(self.incoming_dir)
            if path.is_dir() or any(part.startswith(".") for part in rel.parts) or path.suffix in (".tmp", ".part"):
                continue
            try:
                key = self.shard_key(path)
            except ShardPathError as exc:
                problems.append(str(exc))
                continue
            if key in found:
                problems.append(f"{path}: its shard key {key!r} collides with {found[key]}; rename one of them")
                continue
            found[key] = path
        return found, problems

    def shard_path(self, key: str) -> Path:
        shards, _ = self.discover_shards()
        if key not in shards:
            raise ShardPathError(f"no file under {self.incoming_dir} has shard key {key!r}")
        return shards[key]

    @property
    def tables_dir(self) -> Path:
        return self.warehouse_dir / TABLES_DIR

    def table_files(self, name: str) -> list[Path]:
        return sorted((self.tables_dir / name).glob("part-*.parquet"))

    def view_definitions(self) -> dict[str, str]:
        """Each catalog view's SELECT over the Parquet that exists now (a glob over no file would fail)."""
        globs = {asset: sql_literal(f"{(self.warehouse_dir / asset).as_posix()}/shard=*/part-0.parquet") for asset in SHARD_ASSETS}
        views = {view: sql.format(**globs) for view, sql in CATALOG_VIEWS.items() if self.shard_files(VIEW_SOURCES.get(view, "raw_pool"))}
        tables = sorted(p.name for p in self.tables_dir.glob("*") if self.table_files(p.name)) if self.tables_dir.exists() else []
        return views | {name: table_view_sql(self.tables_dir / name) for name in tables}

    def refresh_catalog(self, con) -> list[str]:
        """(Re)create the catalog views over the Parquet that exists now; returns the view names."""
        definitions = self.view_definitions()
        for view, sql in definitions.items():
            con.execute(f"CREATE OR REPLACE VIEW {view} AS {sql}")
        return list(definitions)

    def missing_shard_files(self) -> dict[str, list[Path]]:
        """Shards whose stats file says they were ingested but whose samples or quarantine Parquet is
        gone (deleted by hand): their rows would silently drop out of ``samples``. Re-ingest restores them."""
        missing = {}
        for stats in self.shard_files("shard_stats"):
            shard = stats.parent.name.removeprefix("shard=")
            gone = [self.shard_file(asset, shard) for asset in ("raw_pool", "quarantine") if not self.shard_file(asset, shard).exists()]
            if gone:
                missing[shard] = gone
        return missing


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# a path part that maps to itself, and whose parts joined with '__' can be split back unambiguously
_PLAIN_PART = re.compile(r"[A-Za-z0-9.-]+(?:_[A-Za-z0-9.-]+)*")
KEY_HASH_CHARS = 10


def shard_key_of(relative_path: str) -> str:
    """Collision-free, path-safe partition key of a file's path under pool/incoming.

    A plain path keeps its readable key, parts joined with ``__`` (``sub/file.jsonl`` ->
    ``sub__file.jsonl``). Any other path (characters outside ``[A-Za-z0-9._-]``, ``__``, ``...``, a
    part starting or ending with ``_``) is made safe and gets ``-`` + the first 10 hex digits of the
    SHA-256 of the original path (``my file.jsonl`` -> ``my_file.jsonl-<hash>``): two names never
    share a key, since a plain key always ends in a file suffix, never in ``-<hash>``.
    """
    parts = relative_path.split("/")
    key = "__".join(_UNSAFE.sub("_", part) for part in parts)
    if all(_PLAIN_PART.fullmatch(part) and "..." not in part for part in parts):
        return key
    digest = hashlib.sha256(relative_path.encode("utf-8", errors="surrogateescape")).hexdigest()[:KEY_HASH_CHARS]
    return f"{re.sub(r'[.]{3,}', '_', key)}-{digest}"


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


def table_view_sql(folder: Path) -> str:
    return f"SELECT * FROM read_parquet({sql_literal(folder.as_posix() + '/part-*.parquet')}, union_by_name = true)"


def sql_literal(text: str) -> str:
    """``text`` as a SQL string literal, quotes doubled: for paths in view definitions, which cannot
    be bound parameters (a ``'`` in MIG_HOME must not end the literal)."""
    return "'" + text.replace("'", "''") + "'"


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
