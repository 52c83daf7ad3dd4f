"""``selection_comparison``: every method at one budget on the current pool, measured side by side."""

import datetime as dt
import json

import dagster as dg
import pyarrow as pa
from pydantic import Field

from mig_assets.core.outputs.report import (
    COMPARED_METRICS,
    comparison_plot,
    html_report,
    markdown_image,
    markdown_table,
    overlap_plot,
)
from mig_assets.core.selection.compare import COMPARISON_FRACTION, guarantees, run_comparison
from mig_assets.core.selection.inputs import load_inputs
from mig_assets.core.store.catalog import has_relation, insert_table
from mig_assets.core.store.schema import COMPARISON_TABLES
from mig_assets.defs.selection.assets import SelectionConfig
from mig_assets.orchestration.partitions import pool_shards
from mig_assets.orchestration.provenance import record_settings
from mig_assets.resources import Warehouse

COLUMNS = ["method", "size", *COMPARED_METRICS, "seconds"]


class ComparisonConfig(SelectionConfig):
    """One budget for every method (default 10% of the pool); the method parameters of SelectionConfig.
    The aligned TAGS run uses ``align`` (penalty when left at none)."""

    budget_fraction: float | None = Field(default=COMPARISON_FRACTION, description="share of the pool each method selects")


@dg.asset(
    deps=[
        dg.AssetDep("raw_pool", partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep("atomic_tags", partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep("sample_embeddings", partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep("label_graph"),
        dg.AssetDep("knowledge_tree"),
        dg.AssetDep("target_profile"),
    ],
    group_name="selection",
    kinds={"duckdb"},
    code_version="1",
    pool="duckdb",
    description="Every selection method (MIG, TAGS unaligned and aligned, random, top quality, Deita, InsTag, "
    "k-center) at one budget: objectives under MIG's and TAGS's measures, label and leaf coverage, mean quality, "
    "embedding diversity, KL to the target, overlaps (tables comparisons, comparison_members). On demand: "
    "k-center costs O(N x picks).",
)
def selection_comparison(context: dg.AssetExecutionContext, config: ComparisonConfig, warehouse: Warehouse) -> dg.MaterializeResult:
    record_settings(context)
    layout = warehouse.layout
    request = config.request("comparison")
    with warehouse.connect() as con:  # every input that exists: a method without its input is left out
        inputs = load_inputs(
            con,
            layout,
            context.instance.get_dynamic_partitions(pool_shards.name),
            embeddings=bool(layout.shard_files("sample_embeddings")),
            graph=has_relation(con, "label_graph_labels"),
            tree=(layout.knowledge_tree_dir / "tree.json").exists(),
            target_required=False,
            exclude_contaminated=request.exclude_contaminated,
            exclude_near_duplicates=request.exclude_near_duplicates,
        )
    pool = inputs.pool
    table, orders = run_comparison(request, inputs)
    for row in table:
        context.log.info(f"{row['method']}: {row['size']:,} samples in {row['seconds']:.2f}s")
    methods = [row["method"] for row in table]
    jaccard = {(a, b): (row["jaccard"].get(b, 1.0)) for row in table for a in [row["method"]] for b in methods}
    plots = {"comparison": comparison_plot(table), "overlap": overlap_plot(methods, jaccard)}
    now = dt.datetime.now(dt.timezone.utc)
    with warehouse.connect() as con:
        con.execute(COMPARISON_TABLES)
        version = con.execute("SELECT coalesce(max(version), 0) + 1 FROM comparisons").fetchall()[0][0]
        rows = [
            {
                "version": version,
                **{c: row.get(c) for c in COLUMNS},
                "budget": request.budget.describe(),
                "n_pool": len(pool.sample_ids),
                "run_id": context.run.run_id,
                "created_at": now,
            }
            for row in table
        ]
        insert_table(con, "comparisons", pa.Table.from_pylist(rows), part=f"v{version:04d}")  # columns in the table's order
        members = pa.table(
            {
                "version": pa.array([version] * sum(len(o) for o in orders.values()), pa.int32()),
                "method": [m for m, o in orders.items() for _ in o],
                "rank": pa.array([r for o in orders.values() for r in range(1, len(o) + 1)], pa.int32()),
                "sample_id": [pool.sample_ids[i] for o in orders.values() for i in o],
            }
        )
        insert_table(con, "comparison_members", members, part=f"v{version:04d}")
    folder = layout.exports_dir / "comparison" / f"v{version:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    summary_md = markdown_table(table, COLUMNS)
    claims = guarantees(table, request.mig)
    claims_md = markdown_table(claims, ["method", "measure", "holds", "claim"])
    overlap_rows = [{"method": a, **{b: round(jaccard[a, b], 3) for b in methods}} for a in methods]
    document = {
        "version": version,
        "budget": request.budget.describe(),
        "pool": len(pool.sample_ids),
        "excluded_failed_tagging": inputs.failed,
        "curation": inputs.exclusions.record(),
        "score_origin": inputs.score_origin,
        "config": request.settings,
        "run_id": context.run.run_id,
        "created_at": now.isoformat(),
        "methods": [{k: v for k, v in row.items()} for row in table],
        "claims": claims,
    }
    (folder / "comparison.json").write_text(json.dumps(document, indent=1, sort_keys=True, default=float))
    (folder / "comparison.md").write_text(
        summary_md
        + "\n\nWhat each greedy guarantees:\n\n"
        + claims_md
        + "\n\nOverlap (Jaccard):\n\n"
        + markdown_table(overlap_rows, ["method", *methods], 3)
        + "\n"
    )
    for name, png in plots.items():
        (folder / f"{name}.png").write_bytes(png)
    (folder / "report.html").write_text(
        html_report(
            f"comparison v{version}",
            {k: document[k] for k in ("budget", "pool", "score_origin", "created_at")},
            plots,
            {"methods": [{c: row.get(c) for c in COLUMNS} for row in table], "what each greedy guarantees": claims, "overlap (Jaccard)": overlap_rows},
        )
    )
    best_kl = min((r for r in table if r["kl_to_target"] is not None), key=lambda r: r["kl_to_target"], default=None)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(table),
            "version": version,
            "budget": request.budget.describe(),
            "pool_size": len(pool.sample_ids),
            **inputs.exclusions.counts(),
            "methods": dg.MetadataValue.md(summary_md),
            "guarantees": dg.MetadataValue.md(claims_md),
            "plots": dg.MetadataValue.md("\n\n".join(markdown_image(png, name) for name, png in plots.items())),
            "closest_to_target": best_kl["method"] if best_kl else "no target profile",
            "report": dg.MetadataValue.path(str(folder / "report.html")),
            "export_dir": dg.MetadataValue.path(str(folder)),
        }
    )
