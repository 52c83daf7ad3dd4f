"""Where everything lives under ``MIG_HOME``, how shard files map to partition keys, and which
catalog views read which Parquet (the SQL of each view over the files that exist now).

Layout::

    MIG_HOME/pool/incoming/**         shard files dropped by users (one shard per file)
    MIG_HOME/warehouse/<asset>/shard=<key>/part-0.parquet
    MIG_HOME/warehouse/<asset>/shard=<key>/imported.json   atomic_tags, quality_scores: imported, read from raw_pool
    MIG_HOME/warehouse/tables/<table>/part-*.parquet   global tables (selections, graph, tree, ...)
    MIG_HOME/warehouse/mig.duckdb     views only, rebuilt from the Parquet whenever needed
    MIG_HOME/exports/<selection>/<version>/
    MIG_HOME/targets/**               the default target set of target_profile (MIG_TARGET_PATH overrides)
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

SHARD_ASSETS = ("raw_pool", "quarantine", "shard_stats", "atomic_tags", "sample_embeddings", "quality_scores", "contamination")
# which of a sample_id's rows is its copy in ``samples``: the kept one, else the first duplicate
COPY_ORDER = "duplicate_of IS NOT NULL, shard, line_no"
CATALOG_VIEWS = {
    # every parsed row, kept or duplicate
    "raw_pool_rows": "SELECT * FROM read_parquet({raw_pool}, hive_partitioning = false, union_by_name = true)",
    # one row per sample_id, the first in COPY_ORDER: the kept copy (ingestion keeps one per id, which
    # the blocking check sample_ids_unique verifies), or the first duplicate when the kept copy's shard
    # changed since. The kept rows are read as they are and only the duplicates without one are
    # ranked: ranking every row cost 0.35 s of the 0.65 s a pool of 939,000 samples takes to read.
    "samples": f"""
        SELECT * FROM raw_pool_rows WHERE duplicate_of IS NULL
        UNION ALL
        SELECT * EXCLUDE (copy_rank) FROM (
            SELECT *, row_number() OVER (PARTITION BY sample_id ORDER BY {COPY_ORDER}) AS copy_rank
            FROM raw_pool_rows
            WHERE duplicate_of IS NOT NULL AND sample_id NOT IN (SELECT sample_id FROM raw_pool_rows WHERE duplicate_of IS NULL))
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
# A shard whose atomic_tags or quality_scores are the pool's own annotations (the imported backends)
# holds this marker instead of a file of rows: its rows are derived from its kept raw_pool rows in
# place, never copied. The shards are found by glob, as the other views find their files; a shard's
# own file of rows (written before its marker is removed, or after it by another backend) takes
# precedence, so a shard's rows are never read twice.
IMPORTED_MARKER = "imported.json"
NO_TAG_ANNOTATION = "the record carries no annotation.instag.content"
NO_QUALITY_ANNOTATION = "the record carries no annotation.deita"
# the rows, in the columns and order of TAG_ROW_SCHEMA (core/tagging/rows.py) and QUALITY_ROW_SCHEMA
# (core/quality/rows.py), as SQL over a kept raw_pool row: only the string items of an InsTag
# annotation are tags (a sample without one is `no_annotation`, with none); the Deita score and its
# per-turn lists as ingestion kept them
IMPORTED_COLUMNS = {
    "atomic_tags": {
        "tags": "coalesce(list_filter(imported_tags, lambda t: t IS NOT NULL), []::VARCHAR[])",
        "surface_tags": "coalesce(imported_tags, []::VARCHAR[])",
        "status": "CASE WHEN imported_tags IS NULL THEN 'no_annotation' ELSE 'ok' END",
        "reason": f"CASE WHEN imported_tags IS NULL THEN '{NO_TAG_ANNOTATION}' ELSE '' END",
        "backend": "'imported'",
        "model": "''",
        "prompt_version": "''",
        "truncated": "false",
        "attempts": "0::INTEGER",
        "tag_policy": "'as_written'",
        "dropped_tags": "[]::STRUCT(surface VARCHAR, reason VARCHAR)[]",
    },
    "quality_scores": {
        "score": "imported_quality",
        "complexity": "imported_complexity_turns",
        "quality": "imported_quality_turns",
        "n_turns": "CASE WHEN len(imported_quality_turns) > 0 THEN len(imported_quality_turns)::INTEGER END",
        "status": "CASE WHEN imported_quality IS NULL THEN 'no_annotation' ELSE 'ok' END",
        "reason": f"CASE WHEN imported_quality IS NULL THEN '{NO_QUALITY_ANNOTATION}' ELSE '' END",
        "backend": "'imported'",
        "model": "''",
        "prompt_version": "''",
        "digit_mass": "NULL::DOUBLE",
        "truncated": "false",
    },
}
IMPORTED_ROWS = {
    asset: "SELECT sample_id, shard, " + ", ".join(f"{sql} AS {name}" for name, sql in columns.items()) for asset, columns in IMPORTED_COLUMNS.items()
}
IMPORTED_ROWS_FROM = f"""
        FROM read_parquet({{raw_pool}}, hive_partitioning = false, union_by_name = true)
        WHERE duplicate_of IS NULL AND shard IN (
            SELECT regexp_extract(file, 'shard=([^/]+)/{IMPORTED_MARKER}$', 1) FROM glob({{markers}})
            EXCEPT SELECT regexp_extract(file, 'shard=([^/]+)/part-0[.]parquet$', 1) FROM glob({{files}}))"""
# global tables: one folder each; replaced tables hold part-0.parquet, histories one file per append
TABLES_DIR = "tables"
VIEW_SOURCES = {
    "raw_pool_rows": "raw_pool",
    "quarantine": "quarantine",
    "shards": "shard_stats",
    "atomic_tags": "atomic_tags",
    "sample_embeddings": "sample_embeddings",
    "quality_scores": "quality_scores",
    "contamination": "contamination",
}


# the file types a shard may be; the store decides (it maps files to partitions), readers follow
SUPPORTED_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".jsonl.gz", ".ndjson.gz", ".json.gz")


def is_supported(path: Path) -> bool:
    """Whether ``path``'s name ends in a shard file type (case-insensitive)."""
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in SUPPORTED_SUFFIXES)


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
        for asset, select in IMPORTED_ROWS.items():  # shards whose rows are read in place
            if self.shard_files("raw_pool") and any((self.warehouse_dir / asset).glob(f"shard=*/{IMPORTED_MARKER}")):
                markers = sql_literal(f"{(self.warehouse_dir / asset).as_posix()}/shard=*/{IMPORTED_MARKER}")
                imported = select + IMPORTED_ROWS_FROM.format(raw_pool=globs["raw_pool"], markers=markers, files=globs[asset])
                views[asset] = " UNION ALL BY NAME ".join([views[asset], imported] if asset in views else [imported])
        tables = sorted(p.name for p in self.tables_dir.glob("*") if self.table_files(p.name)) if self.tables_dir.exists() else []
        return views | {name: table_view_sql(self.tables_dir / name) for name in tables}

    def annotations_in_place(self) -> bool:
        """Whether the pool's tags and scores are all its own annotations, read in place: every
        raw_pool shard has the imported marker of atomic_tags and of quality_scores, and neither has
        a file of rows anywhere. Their views then hold exactly :data:`IMPORTED_COLUMNS` of the kept
        rows, and a reader may compute those columns from the rows instead of joining the views."""
        shards = {path.parent.name for path in self.shard_files("raw_pool")}
        return bool(shards) and all(
            not self.shard_files(asset) and shards <= {path.parent.name for path in (self.warehouse_dir / asset).glob(f"shard=*/{IMPORTED_MARKER}")}
            for asset in IMPORTED_COLUMNS
        )

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


def table_view_sql(folder: Path) -> str:
    return f"SELECT * FROM read_parquet({sql_literal(folder.as_posix() + '/part-*.parquet')}, union_by_name = true)"


def sql_literal(text: str) -> str:
    """``text`` as a SQL string literal, quotes doubled: for paths in view definitions, which cannot
    be bound parameters (a ``'`` in MIG_HOME must not end the literal)."""
    return "'" + text.replace("'", "''") + "'"
