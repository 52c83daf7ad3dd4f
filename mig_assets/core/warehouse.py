"""Where everything lives under ``MIG_HOME``, how shard files map to partition keys, and the
DuckDB catalog (views over the per-shard Parquet) that users query with the plain ``duckdb`` CLI.

Layout::

    MIG_HOME/pool/incoming/**         shard files dropped by users (one shard per file)
    MIG_HOME/warehouse/<asset>/shard=<key>/part-0.parquet
    MIG_HOME/warehouse/mig.duckdb     views + small global tables
    MIG_HOME/exports/<selection>/<version>/
    MIG_HOME/targets/**               the default target set of target_profile (MIG_TARGET_PATH overrides)
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from mig_assets.core.readers import is_supported

SHARD_ASSETS = ("raw_pool", "quarantine", "shard_stats", "atomic_tags", "sample_embeddings", "quality_scores")
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
}
VIEW_SOURCES = {
    "raw_pool_rows": "raw_pool", "quarantine": "quarantine", "shards": "shard_stats", "atomic_tags": "atomic_tags",
    "sample_embeddings": "sample_embeddings", "quality_scores": "quality_scores",
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

    def refresh_catalog(self, con) -> list[str]:
        """(Re)create the catalog views over the Parquet that exists now; returns the view names."""
        globs = {asset: f"'{(self.warehouse_dir / asset).as_posix()}/shard=*/part-0.parquet'" for asset in SHARD_ASSETS}
        created = []
        for view, sql in CATALOG_VIEWS.items():
            source = VIEW_SOURCES.get(view, "raw_pool")
            if not self.shard_files(source):
                continue
            con.execute(f"CREATE OR REPLACE VIEW {view} AS {sql.format(**globs)}")
            created.append(view)
        return created


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
    return bool(con.execute(
        "SELECT count(*) FROM (SELECT table_name AS name FROM duckdb_tables() UNION ALL SELECT view_name FROM duckdb_views()) "
        "WHERE name = ?", [name],
    ).fetchall()[0][0])


def replace_table(con, name: str, table) -> None:
    """``CREATE OR REPLACE TABLE name`` with the rows of an Arrow table."""
    _from_arrow(con, f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM {{source}}", table)


def insert_table(con, name: str, table) -> None:
    """Append the rows of an Arrow table (columns in the table's order) to ``name``."""
    _from_arrow(con, f"INSERT INTO {name} SELECT * FROM {{source}}", table)


def _from_arrow(con, sql: str, table) -> None:
    source = "arrow_source"
    con.register(source, table)
    try:
        con.execute(sql.format(source=source))
    finally:
        con.unregister(source)
