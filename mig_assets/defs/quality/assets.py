"""``quality_scores[shard]``: a Deita-style quality score per kept sample, with a blocking check
that refuses degenerate scores (all equal, or too many failures)."""

import hashlib
import time
from collections import Counter

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from mig_assets.core.quality.cache import QualityCache
from mig_assets.core.quality.rows import QUALITY_ROW_SCHEMA, degenerate, histogram_markdown, imported_quality_rows, quality_rows
from mig_assets.core.quality.scoring import score_samples
from mig_assets.core.store.batch_cache import QUALITY_CACHE_DIR, text_hash
from mig_assets.core.store.layout import NO_QUALITY_ANNOTATION
from mig_assets.core.store.parquet import read_kept_rows, write_imported_marker, write_shard_rows
from mig_assets.core.tagging.rows import value_counter
from mig_assets.orchestration.automation import refuse_to_replace_other_configuration
from mig_assets.orchestration.column_lineage import column_lineage
from mig_assets.orchestration.provenance import record_settings
from mig_assets.orchestration.shard_runs import IMPORTED_SHARD_THREADS, SHARD_MODEL_WORK, each_shard, range_run_metadata
from mig_assets.resources import Scorer, Warehouse

CHECK_NAME = "quality_scores_not_degenerate"
QUALITY_LINEAGE = column_lineage({"sample_id": [("raw_pool", "sample_id")], "score": [("raw_pool", "messages"), ("raw_pool", "imported_quality")]})
QUALITY_COLUMNS = dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type)) for f in QUALITY_ROW_SCHEMA])


class QualityConfig(dg.Config):
    max_failure_rate: float = Field(default=0.02, description="the blocking check fails the shard above this share of failed samples")


def build_quality_scores(scorer_version: str) -> dg.AssetsDefinition:
    """``quality_scores[shard]`` whose code version is the scorer's: changing the backend, engine,
    model, prompt or truncation limits re-scores (new cache key) and shows the scores stale.

    The data version hashes the written scores, so a re-run that reproduces them leaves
    downstream fresh. A run may cover a range of shards (single-run backfill, one engine); each
    shard of the range gets the run's combined metadata, and the check judges the worst shard.
    """

    @dg.asset(
        name="quality_scores",
        **SHARD_MODEL_WORK,
        group_name="quality",
        kinds={"parquet"} if scorer_version == "imported" else {"parquet", "vllm"},
        code_version=f"quality-{scorer_version}",
        description="Deita-style quality score per kept sample (mean over turns of complexity x quality, "
        "in [1, 36]), status ok/failed/no_response/no_annotation; failed samples have no score (never a default).",
        metadata={"dagster/column_schema": QUALITY_COLUMNS},
        check_specs=[
            dg.AssetCheckSpec(
                CHECK_NAME,
                asset="quality_scores",
                blocking=True,
                description="scores are not all equal and the share of failed samples is at most max_failure_rate",
            )
        ],
    )
    def quality_scores(context: dg.AssetExecutionContext, config: QualityConfig, warehouse: Warehouse, scorer: Scorer):
        record_settings(context)
        refuse_to_replace_other_configuration(context)
        started = time.perf_counter()
        shards = each_shard(
            lambda shard: score_shard(context, warehouse, scorer, shard),
            context.partition_keys,
            threads=IMPORTED_SHARD_THREADS if scorer.backend == "imported" else 1,  # a model scores one shard at a time
        )
        verdicts = {shard: degenerate(r["scores"], r["failures"], config.max_failure_rate) for shard, r in shards.items()}
        metadata = range_run_metadata(
            {shard: result["metadata"] for shard, result in shards.items()}, summed=("newly_scored_calls", "calls_from_cache"), shared=("backend", "origin")
        )
        metadata["seconds_shards"] = round(time.perf_counter() - started, 3)  # the shards' work, without Dagster's recording of it
        bad = {shard: reason for shard, reason in verdicts.items() if reason}
        attempted = {shard: len(r["scores"]) + r["failures"] for shard, r in shards.items()}
        failure_rate = max((r["failures"] / attempted[s] if attempted[s] else 0.0) for s, r in shards.items())
        all_scores = np.concatenate([r["scores"] for r in shards.values()])
        return dg.MaterializeResult(
            metadata=metadata,
            data_version=dg.DataVersion(text_hash("|".join(f"{s}:{r['digest']}" for s, r in sorted(shards.items())))[:16]),
            check_results=[
                dg.AssetCheckResult(
                    check_name=CHECK_NAME,
                    passed=not bad,
                    metadata={
                        "verdict": "; ".join(f"{s}: {reason}" for s, reason in bad.items()) or "ok",
                        "failure_rate": round(failure_rate, 4),
                        "max_failure_rate": config.max_failure_rate,
                        "scored": len(all_scores),
                        "distinct_scores": len(np.unique(all_scores)),
                        "shards": len(shards),
                        "failure_examples": dg.MetadataValue.json([e for r in shards.values() for e in r["examples"]][:5]),
                    },
                )
            ],
        )

    return quality_scores


def score_shard(context: dg.AssetExecutionContext, warehouse: Warehouse, scorer: Scorer, shard: str) -> dict:
    """Score one shard's kept samples and write its rows (imported scores as ingestion kept them: a
    marker, the rows read in place); returns its metadata, scores, failure count, a few failure
    examples and a digest of the rows."""
    layout = warehouse.layout
    samples = layout.shard_file("raw_pool", shard)
    extra, origin = {}, "imported Deita annotation (mean over turns of quality x complexity)"
    if scorer.backend == "imported" and "imported_quality_turns" in pq.read_schema(samples).names:
        kept = read_kept_rows(samples, ["sample_id", "imported_quality"])
        score = kept.column("imported_quality")
        present = pc.is_valid(score)  # the columns the metadata and the digest read, as the view derives them
        table = pa.table(
            {
                "sample_id": kept.column("sample_id"),
                "score": score,
                "status": pc.if_else(present, "ok", "no_annotation"),
                "reason": pc.if_else(present, "", NO_QUALITY_ANNOTATION),
            }
        )
        facts = {"samples": table.num_rows, "statuses": dict(value_counter(table.column("status"))), "run_id": context.run.run_id}
        path = write_imported_marker(layout, "quality_scores", shard, facts)
    elif scorer.backend == "imported":  # a shard ingested before ingestion kept the per-turn lists: they are read out of raw
        table = imported_quality_rows(read_kept_rows(samples, ["sample_id", "raw", "imported_quality"]), shard)
        path = write_shard_rows(layout, "quality_scores", shard, table)
    else:
        kept = read_kept_rows(samples, ["sample_id", "messages"])
        ids = kept.column("sample_id").to_pylist()
        prompt = scorer.prompt
        cache = QualityCache(layout.warehouse_dir / QUALITY_CACHE_DIR, scorer.model_id, prompt, scorer.settings_key())
        labels = scorer.labels() if scorer.backend == "logprob" else None
        results, stats = score_samples(
            list(zip(ids, kept.column("messages").to_pylist())),
            scorer.llm(),
            prompt,
            cache,
            labels=labels,
            max_query_tokens=scorer.max_query_tokens,
            max_response_tokens=scorer.max_response_tokens,
            batch_size=scorer.batch_size,
            sampling=scorer.sampling,
            max_attempts=scorer.max_attempts,
            top_k=scorer.top_k,
            log=lambda message: context.log.info(f"{shard}: {message}"),
        )
        table = quality_rows(results, ids, shard, scorer.backend, scorer.model_id, prompt.version)
        origin = f"{scorer.backend} on {scorer.engine}: {scorer.model_id}, prompt {prompt.version} ({prompt.fingerprint})"
        masses = [m for m in table.column("digit_mass").to_pylist() if m is not None]
        extra = {
            "model": scorer.model_id,
            "prompt_version": f"{prompt.version} ({prompt.fingerprint})",
            "newly_scored_calls": stats.scored,
            "calls_from_cache": stats.cached,
            "samples_per_second": round(stats.samples_per_second, 3),
            "calls_per_second": round(stats.units_per_second, 3),
            "truncated_inputs": stats.truncated,
            "generate_seconds": round(stats.generate_seconds, 3),
            "engine_load_seconds": round(getattr(scorer.llm(), "load_seconds", 0.0), 3),
            "cache": dg.MetadataValue.path(str(cache.folder)),
        }
        if scorer.backend == "logprob":
            extra["digit_token_ids"] = dg.MetadataValue.json(labels or "not checked: the server exposes no tokenizer")
            if masses:
                extra["mean_digit_mass"] = round(sum(masses) / len(masses), 4)
        path = write_shard_rows(layout, "quality_scores", shard, table)
    statuses = value_counter(table.column("status"))
    scores = table.column("score").filter(pc.equal(table.column("status"), "ok")).drop_null().to_numpy()
    failed = table.filter(pc.equal(table.column("status"), "failed"))
    reasons = Counter(failed.column("reason").to_pylist())
    examples = [{"sample_id": r["sample_id"], "reason": r["reason"]} for r in failed.slice(0, 5).to_pylist()]
    metadata = {
        "dagster/row_count": table.num_rows,
        "dagster/column_lineage": QUALITY_LINEAGE,
        "backend": scorer.backend,
        "origin": origin,
        "statuses": dg.MetadataValue.json(dict(statuses)),
        "score_histogram": dg.MetadataValue.md(histogram_markdown(scores)),
        "failure_reasons": dg.MetadataValue.json(dict(reasons.most_common(10))),
        "path": dg.MetadataValue.path(str(path)),
        **extra,
    }
    return {"metadata": metadata, "scores": scores, "failures": statuses.get("failed", 0), "examples": examples, "digest": _digest(table)}


def _digest(table: pa.Table) -> str:
    """What downstream reads: sample, score, status (same rows, same data version), one line per
    sample in the shard's row order (its kept samples in file order, whichever backend made the
    rows: no sort needed), hashed from the Arrow buffers."""
    rows = table.select(["sample_id", "score", "status"])
    score = pc.cast(rows.column("score"), pa.string())
    lines = pc.binary_join_element_wise(rows.column("sample_id"), score, rows.column("status"), "\t", null_handling="replace").combine_chunks()
    digest = hashlib.sha256()
    for buffer in lines.buffers()[1:]:  # the offsets, then the characters
        digest.update(buffer)
    return digest.hexdigest()[:16]
