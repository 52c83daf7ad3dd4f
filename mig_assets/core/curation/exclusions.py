"""Curation before selection: the pool samples every selection leaves out by default, and why.

Two reasons, each switched off per selection spec (``exclude_contaminated``,
``exclude_near_duplicates`` in its params):

- ``contaminated``: the sample has a row in the ``contamination`` view (it overlaps a benchmark
  item); the row kept to explain it is its highest score (then method, file, line);
- ``near_duplicate``: the sample is in a ``near_duplicates`` cluster and is not its representative
  (the representative stays a candidate); the row kept is its highest similarity (then cluster).

A sample excluded for both is counted once, as contaminated. :func:`find_exclusions` is the one
call the selection path makes; what it returns is written per selection version to the table
``selection_exclusions``, which ``explain`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from mig_assets.core.curation.shard_check import read_provenance
from mig_assets.core.store.catalog import has_relation

EXCLUSIONS_TABLE = "selection_exclusions"
EXCLUSION_SCHEMA = pa.schema(
    [
        ("selection", pa.string()),
        ("version", pa.int32()),
        ("sample_id", pa.string()),
        ("reason", pa.string()),  # contaminated | near_duplicate
        ("benchmark_file", pa.string()),
        ("benchmark_line", pa.int64()),
        ("method", pa.string()),  # ngram | exact | embedding, or the near-duplicate method
        ("score", pa.float64()),  # contamination score, or similarity to the representative
        ("representative_id", pa.string()),
        ("cluster_id", pa.string()),
    ]
)
_CONTAMINATED_SQL = """
    SELECT sample_id, benchmark_file, benchmark_line, method, score FROM contamination
    WHERE sample_id IN (SELECT unnest($ids))
    QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY score DESC, method, benchmark_file, benchmark_line) = 1"""
_NEAR_DUPLICATE_SQL = """
    SELECT sample_id, CAST(cluster_id AS VARCHAR) AS cluster_id, representative_id, method, similarity FROM near_duplicates
    WHERE sample_id <> representative_id AND sample_id IN (SELECT unnest($ids))
    QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY similarity DESC, CAST(cluster_id AS VARCHAR)) = 1"""


@dataclass
class Exclusions:
    """What one selection run leaves out of the pool, with the evidence for each sample."""

    rows: list[dict] = field(default_factory=list)  # one per excluded sample, EXCLUSION_SCHEMA without selection/version
    contamination_checked: bool = False  # the switch was on
    near_duplicates_checked: bool = False
    shards_not_checked: list[str] = field(default_factory=list)  # pool shards without a contamination file
    contamination_configs: list[dict] = field(default_factory=list)  # distinct configs of the contamination files used
    near_duplicates_available: bool = False

    @property
    def excluded_ids(self) -> set[str]:
        return {row["sample_id"] for row in self.rows}

    def counts(self) -> dict[str, int]:
        return {
            "excluded_contaminated": sum(row["reason"] == "contaminated" for row in self.rows),
            "excluded_near_duplicates": sum(row["reason"] == "near_duplicate" for row in self.rows),
        }

    def record(self) -> dict:
        """What the manifest keeps: switches, counts, the benchmark files (with SHA-256), methods and thresholds."""
        return {
            "exclude_contaminated": self.contamination_checked,
            "exclude_near_duplicates": self.near_duplicates_checked,
            **self.counts(),
            "decontamination": self.contamination_configs,
            "shards_not_checked_for_contamination": self.shards_not_checked,
            "near_duplicates_available": self.near_duplicates_available,
            "excluded_per_benchmark": self.per_benchmark(),
        }

    def per_benchmark(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows:
            if row["reason"] == "contaminated":
                counts[row["benchmark_file"]] = counts.get(row["benchmark_file"], 0) + 1
        return dict(sorted(counts.items()))

    def table(self, selection: str, version: int) -> pa.Table:
        return pa.Table.from_pylist([{"selection": selection, "version": version, **row} for row in self.rows], schema=EXCLUSION_SCHEMA)

    def explain_removals(self, diff: list[dict]) -> list[dict]:
        """``diff`` (changes since the previous version) with the reason of each removed member that was excluded now."""
        evidence = {row["sample_id"]: row for row in self.rows}
        return [
            d | {"reason": f"excluded before selection: {describe(evidence[d['sample_id']])}"} if d["change"] == "removed" and d["sample_id"] in evidence else d
            for d in diff
        ]

    def report_rows(self, limit: int = 50) -> list[dict]:
        """The first ``limit`` exclusions as the report's table shows them."""
        return [{"sample_id": r["sample_id"][:12], "reason": r["reason"], "evidence": describe(r)} for r in self.rows[:limit]]


def find_exclusions(con, layout, sample_ids: list[str], pool_shards: list[str], *, contamination: bool = True, near_duplicates: bool = True) -> Exclusions:
    """The samples of ``sample_ids`` to leave out (reads the catalog views ``contamination`` and
    ``near_duplicates`` when they exist; either missing excludes nothing for its reason)."""
    found = Exclusions(contamination_checked=contamination, near_duplicates_checked=near_duplicates)
    found.near_duplicates_available = has_relation(con, "near_duplicates")
    ids = list(sample_ids)
    if contamination:
        files = {shard: layout.shard_file("contamination", shard) for shard in pool_shards}
        found.shards_not_checked = sorted(shard for shard, path in files.items() if not path.exists())
        configs = [read_provenance(path)[0] for path in files.values() if path.exists()]
        found.contamination_configs = [c for i, c in enumerate(configs) if c not in configs[:i]]
        if has_relation(con, "contamination"):
            for sid, file, line, method, score in con.execute(_CONTAMINATED_SQL, {"ids": ids}).fetchall():
                found.rows.append(_row(sid, "contaminated", benchmark_file=file, benchmark_line=line, method=method, score=score))
    if near_duplicates and found.near_duplicates_available:
        already = found.excluded_ids
        for sid, cluster, representative, method, similarity in con.execute(_NEAR_DUPLICATE_SQL, {"ids": ids}).fetchall():
            if sid not in already:
                found.rows.append(_row(sid, "near_duplicate", method=method, score=similarity, representative_id=representative, cluster_id=cluster))
    found.rows.sort(key=lambda row: (row["reason"], row["sample_id"]))
    return found


def exclusion_of(con, selection: str, version: int, sample_id: str) -> str | None:
    """Why ``sample_id`` was left out of the version before selection, or None when it was not."""
    if not has_relation(con, EXCLUSIONS_TABLE):
        return None
    cursor = con.execute(f"SELECT * FROM {EXCLUSIONS_TABLE} WHERE selection = ? AND version = ? AND sample_id = ?", [selection, version, sample_id])
    names = [d[0] for d in cursor.description]
    found = cursor.fetchall()
    return f"excluded before selection: {describe(dict(zip(names, found[0])))}" if found else None


def describe(row: dict) -> str:
    if row["reason"] == "contaminated":
        return (
            f"contaminated: overlaps benchmark item {Path(row['benchmark_file']).name} line {row['benchmark_line']} "
            f"({row['benchmark_file']}), method {row['method']}, score {row['score']:.3f}"
        )
    return f"near duplicate of representative {row['representative_id']} (cluster {row['cluster_id']}, {row['method']}, similarity {row['score']:.3f})"


def _row(sample_id: str, reason: str, **values) -> dict:
    return {
        "sample_id": sample_id,
        "reason": reason,
        "benchmark_file": None,
        "benchmark_line": None,
        "method": None,
        "score": None,
        "representative_id": None,
        "cluster_id": None,
    } | values
