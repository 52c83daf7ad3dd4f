"""The ``quality_scores`` table: its schema, its rows (from the pool's Deita annotation, or from
scoring results), the degenerate-scores verdict and the score histogram shown in the UI."""

from __future__ import annotations

import json

import pyarrow as pa

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
    """Rows from the shard's kept samples (columns sample_id, imported_quality, raw): the Deita
    score the pool carries, with its per-turn lists when the raw record still has them."""
    rows = []
    raws = samples.column("raw").to_pylist() if "raw" in samples.column_names else [None] * samples.num_rows
    for sample_id, score, raw in zip(samples.column("sample_id").to_pylist(), samples.column("imported_quality").to_pylist(), raws):
        complexity, quality = _deita_lists(raw)
        rows.append(
            {
                "sample_id": sample_id,
                "shard": shard,
                "score": score,
                "complexity": complexity,
                "quality": quality,
                "n_turns": len(quality) if quality else None,
                "status": "ok" if score is not None else "no_annotation",
                "reason": "" if score is not None else "the record carries no annotation.deita",
                "backend": "imported",
                "model": "",
                "prompt_version": "",
                "digit_mass": None,
                "truncated": False,
            }
        )
    return pa.Table.from_pylist(rows, schema=QUALITY_ROW_SCHEMA)


def _deita_lists(raw: str | None) -> tuple[list[float] | None, list[float] | None]:
    if raw is None:
        return None, None
    try:
        deita = json.loads(raw)["annotation"]["deita"]
        quality = [float(v) for v in deita["quality_scores"]]
        complexity = [float(v) for v in deita["complexity_scores"]][: len(quality)]
        return complexity, quality
    except (TypeError, KeyError, ValueError, json.JSONDecodeError):
        return None, None


def quality_rows(results: dict[str, dict], sample_ids: list[str], shard: str, backend: str, model: str, prompt_version: str) -> pa.Table:
    """The shard's quality_scores table, one row per sample in ``sample_ids`` order."""
    rows = [
        {**results[sample_id], "sample_id": sample_id, "shard": shard, "backend": backend, "model": model, "prompt_version": prompt_version}
        for sample_id in sample_ids
    ]
    return pa.Table.from_pylist(rows, schema=QUALITY_ROW_SCHEMA)


def score_histogram(scores: list[float], lo: float = SCORE_RANGE[0], hi: float = SCORE_RANGE[1], bins: int = 7) -> list[tuple[float, float, int]]:
    """Counts over ``bins`` equal bins of [lo, hi] (the last bin closed); values outside go to the edges."""
    width = (hi - lo) / bins
    counts = [0] * bins
    for score in scores:
        counts[min(bins - 1, max(0, int((score - lo) // width)))] += 1
    return [(lo + i * width, lo + (i + 1) * width, n) for i, n in enumerate(counts)]


def histogram_markdown(scores: list[float]) -> str:
    if not scores:
        return "_no scores_"
    histogram = score_histogram(scores)
    top = max(n for _, _, n in histogram) or 1
    lines = ["| score | samples | |", "|---|---|---|"]
    for i, (a, b, n) in enumerate(histogram):
        bracket = "]" if i == len(histogram) - 1 else ")"
        lines.append(f"| [{a:g}, {b:g}{bracket} | {n} | {'█' * round(20 * n / top)} |")
    ordered = sorted(scores)
    median = ordered[len(ordered) // 2] if len(ordered) % 2 else (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2
    lines.append("")
    lines.append(
        f"min {ordered[0]:.3g}, median {median:.3g}, mean {sum(ordered) / len(ordered):.3g}, max {ordered[-1]:.3g}, "
        f"{len(set(ordered))} distinct values over {len(ordered)} samples"
    )
    return "\n".join(lines)


def degenerate(scores: list[float], failures: int, max_failure_rate: float, *, tolerance: float = 1e-9) -> str | None:
    """Why a shard's scores are unusable, or None: the failure rate (failures over scored + failed)
    above ``max_failure_rate``, or two or more scores that are all equal (a constant scorer, like
    Deita's silent 3.0). Samples without anything to score (no response, no annotation) don't count."""
    attempted = len(scores) + failures
    if attempted and failures / attempted > max_failure_rate:
        return f"failure rate {failures / attempted:.1%} ({failures}/{attempted}) above {max_failure_rate:.1%}"
    if len(scores) >= 2 and max(scores) - min(scores) <= tolerance:
        return f"all {len(scores)} scores equal {scores[0]:.6g}"
    return None
