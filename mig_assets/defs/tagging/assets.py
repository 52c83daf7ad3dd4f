"""``atomic_tags[shard]`` and the global ``tag_vocabulary``."""

import time
from collections import Counter

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from mig_assets.core.store.catalog import replace_table
from mig_assets.core.store.parquet import read_kept_rows, write_imported_marker, write_shard_rows
from mig_assets.core.tagging.canonical import (
    TAG_POLICIES,
    TAG_RULES_VERSION,
    canonical_for_policy,
    policy_of_backend,
)
from mig_assets.core.tagging.rows import (
    NOT_JUNK_REASONS,
    cached_tag_rows,
    imported_tag_figures,
    kept_text_hashes,
    query_text,
    value_counter,
)
from mig_assets.orchestration.automation import (
    re_select,
    refuse_to_replace_other_configuration,
)
from mig_assets.orchestration.column_lineage import column_lineage
from mig_assets.orchestration.provenance import record_settings
from mig_assets.orchestration.shard_runs import IMPORTED_SHARD_THREADS, SHARD_MODEL_WORK, each_shard, range_run_metadata
from mig_assets.orchestration.tagging import tag_on_ray, tag_through_cache
from mig_assets.resources import Execution, Tagger, Warehouse

TOP_TAGS = 15
JUNK_EXAMPLES = 5
TAGS_LINEAGE = column_lineage({"sample_id": [("raw_pool", "sample_id")], "tags": [("raw_pool", "messages"), ("raw_pool", "imported_tags")]})


class TaggingConfig(dg.Config):
    max_failure_rate: float = Field(default=0.02, description="the blocking check fails the shard above this share of failed samples")
    max_junk_share: float = Field(
        default=0.3,
        description="the blocking check junk_tag_share fails the shard when more than this share of the LLM's surface tags is junk "
        "(stop words, repeated words, numbers, placeholders, boilerplate, prompt copies, generic): a broken tagger stops the pipeline",
    )


def build_atomic_tags(tagger_version: str) -> dg.AssetsDefinition:
    """``atomic_tags[shard]`` whose code version is the tagger's and the tag rules': changing the backend,
    model, prompt or sampling re-tags (new cache key), changing the rules re-derives the tags from the
    cached answers; either shows the tags stale in the UI.

    A run may cover a range of shards (single-run backfills): the model then loads once for all of
    them. Each shard of the range gets a materialization carrying the run's combined metadata (a
    table per shard), and the check judges the worst shard.
    """

    @dg.asset(
        name="atomic_tags",
        **SHARD_MODEL_WORK,
        group_name="tagging",
        kinds={"parquet", "vllm"} if tagger_version != "imported" else {"parquet"},
        code_version=f"tags-{tagger_version}-rules{TAG_RULES_VERSION}",
        description="Canonical knowledge/skill tags per kept sample of the shard, with parse status "
        "ok/repaired/failed (failed samples keep no tags and are excluded downstream).",
        check_specs=[
            dg.AssetCheckSpec(
                "tagging_failure_rate",
                asset="atomic_tags",
                blocking=True,
                description="share of samples whose tagging failed is at most max_failure_rate",
            ),
            dg.AssetCheckSpec(
                "junk_tag_share",
                asset="atomic_tags",
                blocking=True,
                description="share of the LLM's surface tags dropped as junk is at most max_junk_share (0 for imported tags)",
            ),
        ],
    )
    def atomic_tags(context: dg.AssetExecutionContext, config: TaggingConfig, warehouse: Warehouse, tagger: Tagger, execution: Execution):
        record_settings(context)
        refuse_to_replace_other_configuration(context)
        on_ray = execution.on_ray and tagger.backend != "imported"
        if on_ray:
            texts = kept_text_hashes(warehouse.layout, context.partition_keys, tagger.include_response)
            figures, cluster_extra = tag_on_ray(texts, tagger, execution, warehouse.layout, include_response=tagger.include_response, log=context.log.info)
        else:
            figures, cluster_extra = {}, {}
        started = time.perf_counter()
        shards = each_shard(
            lambda shard: tag_shard(context, warehouse, tagger, shard, figures.get(shard)),
            context.partition_keys,
            threads=IMPORTED_SHARD_THREADS if tagger.backend == "imported" else 1,  # a model tags one shard at a time
        )
        per_shard = {shard: result[0] for shard, result in shards.items()}
        metadata = range_run_metadata(per_shard, summed=("newly_tagged", "from_cache"))
        metadata["seconds_shards"] = round(time.perf_counter() - started, 3)  # the shards' work, without Dagster's recording of it
        if len(shards) > 1 and any("generate_seconds" in m for m in per_shard.values()):
            # model time adds up over the shards; the engine loads once per run (each shard reports that load)
            metadata["generate_seconds"] = round(sum(m.get("generate_seconds", 0.0) for m in per_shard.values()), 3)
            metadata["engine_load_seconds"] = max(m.get("engine_load_seconds", 0.0) for m in per_shard.values())
        failure_rate = max(result[1] for result in shards.values())
        failures = [f for result in shards.values() for f in result[2]][:5]
        junk = max((result[3] for result in shards.values()), key=lambda figures: figures["share"])
        return dg.MaterializeResult(
            metadata={**metadata, **cluster_extra},
            check_results=[
                dg.AssetCheckResult(
                    check_name="tagging_failure_rate",
                    passed=failure_rate <= config.max_failure_rate,
                    metadata={
                        "failure_rate": round(failure_rate, 4),
                        "max_failure_rate": config.max_failure_rate,
                        "shards": len(shards),
                        "examples": dg.MetadataValue.json(failures),
                    },
                ),
                dg.AssetCheckResult(
                    check_name="junk_tag_share",
                    passed=junk["share"] <= config.max_junk_share,
                    metadata={
                        "junk_share": round(junk["share"], 4),
                        "max_junk_share": config.max_junk_share,
                        "junk_tags": junk["junk"],
                        "surface_tags": junk["surface"],
                        "examples": dg.MetadataValue.json(junk["examples"]),
                    },
                ),
            ],
        )

    return atomic_tags


def tag_shard(context: dg.AssetExecutionContext, warehouse: Warehouse, tagger: Tagger, shard: str, ray_figures=None):
    """Tag one shard's kept samples; returns its metadata, failure rate, a few failure examples and
    its junk figures (:func:`junk_figures`).

    After a Ray run (``ray_figures``: the shard's share of it) every answer is in the cache: the
    shard is assembled by the same code, with a backend that refuses work, and the cluster's
    figures replace the (empty) local ones."""
    layout = warehouse.layout
    if tagger.backend == "imported":  # the annotation column alone: the rows are read in place, not copied
        annotations = read_kept_rows(layout.shard_file("raw_pool", shard), ["imported_tags"]).column("imported_tags")
        figures = imported_tag_figures(annotations)
        statuses, tag_counts, per_sample, rows = figures["statuses"], figures["tags"], figures["tags_per_sample"], len(annotations)
        facts = {"tag_policy": "as_written", "samples": rows, "statuses": dict(statuses), "run_id": context.run.run_id}
        path = write_imported_marker(layout, "atomic_tags", shard, facts)
        failed, extra = [], {}
        junk = {"surface": figures["surface"], "junk": 0, "share": 0.0, "by_reason": {}, "examples": {}}  # as written: nothing dropped
    else:
        kept = read_kept_rows(layout.shard_file("raw_pool", shard), ["sample_id", "messages"])
        ids = kept.column("sample_id").to_pylist()
        texts = [query_text(m, tagger.include_response) for m in kept.column("messages").to_pylist()]
        results, stats, load_seconds = tag_through_cache(
            list(zip(ids, texts)), tagger, layout, ray_figures=ray_figures, log=lambda message: context.log.info(f"{shard}: {message}")
        )
        table = cached_tag_rows(results, ids, texts, shard, tagger.backend, tagger.model_id, tagger.prompt_version)
        extra = {
            "newly_tagged": stats.tagged,
            "from_cache": stats.cached,
            "samples_per_second": round(stats.samples_per_second, 3),
            "input_tokens_per_second": round(stats.input_tokens / stats.generate_seconds, 1) if stats.generate_seconds else 0.0,
            "truncated": stats.truncated,
            "model": tagger.model_id,
            "prompt_version": f"{tagger.prompt_version} ({tagger.prompt.fingerprint})",
            "cache": dg.MetadataValue.path(str(tagger.tag_cache(layout.warehouse_dir).folder)),
            "generate_seconds": round(stats.generate_seconds, 3),
            "engine_load_seconds": round(load_seconds, 3),
        }
        path = write_shard_rows(layout, "atomic_tags", shard, table)
        statuses, rows = value_counter(table.column("status")), table.num_rows
        tag_counts = value_counter(pc.list_flatten(table.column("tags")))  # in first-seen order, as most_common breaks ties
        per_sample = value_counter(pc.list_value_length(table.column("tags")))
        failed = table.filter(pc.equal(table.column("status"), "failed")).slice(0, 5).to_pylist()
        junk = junk_figures(table)
    failure_rate = statuses.get("failed", 0) / rows if rows else 0.0
    metadata = {
        "dagster/row_count": rows,
        "dagster/column_lineage": TAGS_LINEAGE,
        "backend": tagger.backend,
        "statuses": dg.MetadataValue.json(dict(statuses)),
        "tags_per_sample": dg.MetadataValue.json({str(k): v for k, v in sorted(per_sample.items())}),
        "top_tags": dg.MetadataValue.md(_top_tags_md(tag_counts)),
        "tag_policy": f"{policy_of_backend(tagger.backend)}: {TAG_POLICIES[policy_of_backend(tagger.backend)]}",
        "dropped_tags_by_reason": dg.MetadataValue.json(junk["by_reason"]),
        "path": dg.MetadataValue.path(str(path)),
        **extra,
    }
    return metadata, failure_rate, [{"sample_id": r["sample_id"], "reason": r["reason"]} for r in failed], junk


def junk_figures(table: pa.Table) -> dict:
    """Surface tags of non-failed rows, how many were dropped as junk (any reason but the tag cap), the
    share, counts by reason and a few examples of each reason."""
    by_reason: Counter = Counter()
    examples: dict[str, list[str]] = {}
    counted = pc.invert(pc.fill_null(pc.equal(table.column("status"), "failed"), False))  # two columns filtered, not the table
    surface = pc.sum(pc.list_value_length(table.column("surface_tags").filter(counted))).as_py() or 0
    for item in pc.list_flatten(table.column("dropped_tags").filter(counted)).to_pylist():  # only the dropped tags, in row order
        by_reason[item["reason"]] += 1
        shown = examples.setdefault(item["reason"], [])
        if len(shown) < JUNK_EXAMPLES and item["surface"] not in shown:
            shown.append(item["surface"])
    junk = sum(n for reason, n in by_reason.items() if reason not in NOT_JUNK_REASONS)
    return {
        "surface": surface,
        "junk": junk,
        "share": junk / surface if surface else 0.0,
        "by_reason": dict(by_reason.most_common()),
        "examples": examples,
    }


def _columns(con, relation: str) -> set[str]:
    return {row[0] for row in con.execute(f"DESCRIBE {relation}").fetchall()}


def _dropped_md(by_reason: list[tuple]) -> str:
    rows = ["| reason | occurrences | examples |", "|---|---|---|"] + [f"| {r} | {n} | {', '.join(map(repr, ex))} |" for r, n, ex in by_reason]
    return "\n".join(rows) if by_reason else "_none dropped_"


def _top_tags_md(counts: Counter) -> str:
    rows = ["| tag | samples |", "|---|---|"] + [f"| {tag} | {n} |" for tag, n in counts.most_common(TOP_TAGS)]
    return "\n".join(rows) if counts else "_no tags_"


@dg.asset(
    deps=[dg.AssetDep("atomic_tags", partition_mapping=dg.AllPartitionMapping())],
    group_name="tagging",
    kinds={"duckdb"},
    code_version="2",
    pool="duckdb",
    automation_condition=re_select,
    description="Every canonical tag with the number of kept samples carrying it (tags parsed ok or repaired), and the surface "
    "forms that normalize to it (tables tag_vocabulary and tag_surface_forms).",
)
def tag_vocabulary(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    record_settings(context)
    with warehouse.connect() as con:
        vocabulary = con.sql(
            """
            SELECT tag, count(*) AS n_samples  -- each sample's distinct tags, once each: no distinct count over pairs
            -- the pool's ids: those of samples, read from its rows (no window picking each id's copy)
            FROM (SELECT unnest(list_distinct(t.tags)) AS tag FROM atomic_tags t SEMI JOIN raw_pool_rows USING (sample_id) WHERE t.status <> 'failed')
            GROUP BY tag ORDER BY n_samples DESC, tag
            """
        ).to_arrow_table()
        replace_table(con, "tag_vocabulary", vocabulary)
        surface = con.execute(
            "SELECT backend, surface, count(*) FROM (SELECT backend, unnest(surface_tags) AS surface FROM atomic_tags) GROUP BY ALL ORDER BY backend, surface"
        ).fetchall()
        dropped = (
            dict(
                con.execute(
                    "SELECT backend || chr(0) || d.surface, any_value(d.reason ORDER BY d.reason) FROM "
                    "(SELECT backend, unnest(dropped_tags) AS d FROM atomic_tags) GROUP BY ALL"
                ).fetchall()
            )
            if "dropped_tags" in _columns(con, "atomic_tags")
            else {}
        )
        policy = {backend: policy_of_backend(backend) for backend, _, _ in surface}
        forms = pa.table(
            {
                "surface": [s for _, s, _ in surface],
                "tag": pa.array([canonical_for_policy(s, policy[b]) for b, s, _ in surface], pa.string()),
                "occurrences": pa.array([n for _, _, n in surface], pa.int64()),
                "backend": [b for b, _, _ in surface],
                "tag_policy": [policy[b] for b, _, _ in surface],
                "dropped_reason": pa.array([dropped.get(f"{b}\0{s}") for b, s, _ in surface], pa.string()),
            }
        )
        replace_table(con, "tag_surface_forms", forms)
        n_tags, n_tagged = con.execute("SELECT count(*), coalesce(sum(n_samples), 0) FROM tag_vocabulary").fetchall()[0]
        top = con.execute("SELECT tag, n_samples FROM tag_vocabulary LIMIT ?", [TOP_TAGS]).fetchall()
        by_reason = con.execute(
            "SELECT dropped_reason, sum(occurrences), list(surface ORDER BY occurrences DESC, surface)[1:5] FROM tag_surface_forms "
            "WHERE dropped_reason IS NOT NULL GROUP BY ALL ORDER BY 2 DESC, 1"
        ).fetchall()
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": n_tags,
            "dagster/column_lineage": column_lineage({"tag": [("atomic_tags", "tags")], "n_samples": [("atomic_tags", "sample_id")]}),
            "tag_assignments": n_tagged,
            "surface_forms": len(surface),
            "tag_policy": dg.MetadataValue.json({b: f"{p}: {TAG_POLICIES[p]}" for b, p in sorted(policy.items())}),
            "surface_occurrences_dropped": int(sum(n for _, n, _ in by_reason)),
            "dropped_by_reason": dg.MetadataValue.md(_dropped_md(by_reason)),
            "top_tags": dg.MetadataValue.md(_top_tags_md(Counter(dict(top)))),
        }
    )
