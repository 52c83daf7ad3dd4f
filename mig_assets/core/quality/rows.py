"""The ``quality_scores`` table: its schema, its rows (from the pool's Deita annotation, or from
scoring results), the degenerate-scores verdict and the score histogram shown in the UI."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mig_assets.core.store.layout import NO_QUALITY_ANNOTATION

SCORE_RANGE = (1.0, 36.0)  # complexity x quality, each in [1, 6]

QUALITY_ROW_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("shard", pa.string()),
        ("score", pa.float64()),  # mean over turns of complexity x quality; NULL unless status = 'ok'
        ("complexity", pa.list_(pa.float64())),  # per turn (NULL when unknown)
        ("quality", pa.list_(pa.float64())),  # per turn
        ("n_turns", pa.int32()),  # (query, response) pairs scored
        ("status", pa.string()),  # ok | failed | no_response | no_annotation
        ("reason", pa.string()),
        ("backend", pa.string()),
        ("model", pa.string()),
        ("prompt_version", pa.string()),
        ("digit_mass", pa.float64()),  # logprob: least probability the model put on the digits 1..6
        ("truncated", pa.bool_()),
    ]
)


def imported_quality_rows(samples: pa.Table, shard: str) -> pa.Table:
    """Rows from the kept samples (columns sample_id, raw, imported_quality) of a shard ingested
    before ingestion kept the per-turn lists (a newer shard's rows are read in place, see
    ``core/store/layout.IMPORTED_ROWS``): the Deita score the pool carries, with its per-turn lists,
    which DuckDB's JSON functions read out of the raw records (vectorized, no Python object per
    record); lists that are not all numbers count as absent."""
    n = samples.num_rows
    complexity, quality = deita_lists(samples.column("raw"))
    score = samples.column("imported_quality")
    present = pc.is_valid(score)
    turns = pc.list_value_length(quality)

    def repeat(value, type_: pa.DataType) -> pa.Array:
        return pa.repeat(pa.scalar(value, type_), n)

    columns = {
        "sample_id": samples.column("sample_id"),
        "shard": repeat(shard, pa.string()),
        "score": score,
        "complexity": complexity,
        "quality": quality,
        "n_turns": pc.if_else(pc.greater(turns, 0), turns, pa.scalar(None, turns.type)).cast(pa.int32()),
        "status": pc.if_else(present, "ok", "no_annotation"),
        "reason": pc.if_else(present, "", NO_QUALITY_ANNOTATION),
        "backend": repeat("imported", pa.string()),
        "model": repeat("", pa.string()),
        "prompt_version": repeat("", pa.string()),
        "digit_mass": pa.nulls(n, pa.float64()),
        "truncated": repeat(False, pa.bool_()),
    }
    return pa.table(columns, schema=QUALITY_ROW_SCHEMA)


def deita_lists(raw: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """The per-turn complexity and quality lists of each raw record's ``annotation.deita``
    (complexity cut to the quality list's length); both null where either is missing, or is not a
    list of numbers, or the record is not JSON."""
    with duckdb.connect() as con:  # a private in-memory connection: the rows live in this Arrow table
        con.register("records", pa.table({"raw": raw}))
        # a list of finite numbers (JSON's numbers or numeric strings, as Python's float() reads them)
        con.execute("CREATE MACRO numbers(v) AS v IS NOT NULL AND len(list_filter(v, lambda x: x IS NULL OR NOT isfinite(x))) = 0")
        lists = con.sql(
            """
            SELECT CASE WHEN numbers(q) AND numbers(c) THEN list_slice(c, 1, len(q)) END AS complexity,
                   CASE WHEN numbers(q) AND numbers(c) THEN q END AS quality
            FROM (SELECT TRY_CAST(json_extract(doc, '$.annotation.deita.quality_scores') AS DOUBLE[]) AS q,
                         TRY_CAST(json_extract(doc, '$.annotation.deita.complexity_scores') AS DOUBLE[]) AS c
                  FROM (SELECT TRY_CAST(raw AS JSON) AS doc FROM records))
            """
        ).to_arrow_table()
    return lists.column("complexity").combine_chunks(), lists.column("quality").combine_chunks()


def quality_rows(results: dict[str, dict], sample_ids: list[str], shard: str, backend: str, model: str, prompt_version: str) -> pa.Table:
    """The shard's quality_scores table, one row per sample in ``sample_ids`` order."""
    rows = [
        {**results[sample_id], "sample_id": sample_id, "shard": shard, "backend": backend, "model": model, "prompt_version": prompt_version}
        for sample_id in sample_ids
    ]
    return pa.Table.from_pylist(rows, schema=QUALITY_ROW_SCHEMA)


def score_histogram(scores: Sequence[float], lo: float = SCORE_RANGE[0], hi: float = SCORE_RANGE[1], bins: int = 7) -> list[tuple[float, float, int]]:
    """Counts over ``bins`` equal bins of [lo, hi] (the last bin closed); values outside go to the edges."""
    width = (hi - lo) / bins
    bin_of = np.clip(np.floor_divide(np.asarray(scores, np.float64) - lo, width), 0, bins - 1).astype(np.int64)
    counts = np.bincount(bin_of, minlength=bins)
    return [(lo + i * width, lo + (i + 1) * width, int(n)) for i, n in enumerate(counts)]


def histogram_markdown(scores: Sequence[float]) -> str:
    if not len(scores):
        return "_no scores_"
    histogram = score_histogram(scores)
    top = max(n for _, _, n in histogram) or 1
    lines = ["| score | samples | |", "|---|---|---|"]
    for i, (a, b, n) in enumerate(histogram):
        bracket = "]" if i == len(histogram) - 1 else ")"
        lines.append(f"| [{a:g}, {b:g}{bracket} | {n} | {'█' * round(20 * n / top)} |")
    values = np.asarray(scores, np.float64)
    lines.append("")
    lines.append(
        f"min {values.min():.3g}, median {np.median(values):.3g}, mean {values.mean():.3g}, max {values.max():.3g}, "
        f"{len(np.unique(values))} distinct values over {len(values)} samples"
    )
    return "\n".join(lines)


def degenerate(scores: Sequence[float], failures: int, max_failure_rate: float, *, tolerance: float = 1e-9) -> str | None:
    """Why a shard's scores are unusable, or None: the failure rate (failures over scored + failed)
    above ``max_failure_rate``, or two or more scores that are all equal (a constant scorer, like
    Deita's silent 3.0). Samples without anything to score (no response, no annotation) don't count."""
    attempted = len(scores) + failures
    if attempted and failures / attempted > max_failure_rate:
        return f"failure rate {failures / attempted:.1%} ({failures}/{attempted}) above {max_failure_rate:.1%}"
    if len(scores) >= 2 and np.ptp(scores) <= tolerance:
        return f"all {len(scores)} scores equal {scores[0]:.6g}"
    return None
