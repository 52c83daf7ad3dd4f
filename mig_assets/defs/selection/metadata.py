"""The Dagster metadata of a selection version: counts, curves, coverage, diff and input changes."""

from collections import Counter
from pathlib import Path

import dagster as dg
import numpy as np

from mig_assets.core.outputs.report import markdown_image, markdown_table
from mig_assets.core.selection.audit import PersistedSelection
from mig_assets.core.selection.inputs import SelectionInputs
from mig_assets.core.selection.request import SelectionRequest
from mig_assets.core.selection.run import SelectionOutcome
from mig_assets.core.tags.information import coverage_by_level, kl_divergence, leaf_entropy
from mig_assets.orchestration.column_lineage import column_lineage

CURVE_POINTS = 20


def selection_metadata(request: SelectionRequest, inputs: SelectionInputs, outcome: SelectionOutcome, saved: PersistedSelection) -> dict:
    pool, order, version = inputs.pool, outcome.order, saved.version
    metadata = {
        "dagster/row_count": len(order),
        "dagster/column_lineage": column_lineage(
            {"sample_id": [("raw_pool", "sample_id")], "messages": [("raw_pool", "messages")], "top_labels": [("atomic_tags", "tags")]}
        ),
        "version": version,
        "pool_size": len(pool.sample_ids),
        "selected_tokens_est": int(pool.tokens[order].sum()),
        "excluded_failed_tagging": inputs.failed,
        **inputs.exclusions.counts(),
        "excluded_per_benchmark": dg.MetadataValue.json(inputs.exclusions.per_benchmark()),
        "shards_not_checked_for_contamination": len(inputs.exclusions.shards_not_checked),
        "score_origin": inputs.score_origin,
        "score_distribution": dg.MetadataValue.md(score_table(pool.scores, pool.scores[order])),
        "export_dir": dg.MetadataValue.path(str(Path(saved.files["data.jsonl"]).parent)),
    }
    if request.method in ("mig", "tags") and len(order):
        points = np.unique(np.linspace(0, len(order) - 1, min(CURVE_POINTS, len(order))).astype(int))
        metadata["objective_curve"] = dg.MetadataValue.json(
            [{"rank": int(i) + 1, "objective": round(float(outcome.objective[i]), 4), "gain": round(float(outcome.gains[i]), 4)} for i in points]
        )
        metadata["objective"] = float(outcome.objective[-1])
    if inputs.graph is not None and inputs.graph.labels:
        covered = int((outcome.coverage > 0).sum()) if outcome.coverage is not None else 0
        metadata["labels_covered"] = covered
        metadata["label_coverage"] = round(covered / len(inputs.graph.labels), 4)
    changes = Counter(row["change"] for row in saved.diff)
    return metadata | {
        "plots": dg.MetadataValue.md("\n\n".join(markdown_image(png, name) for name, png in saved.plots.items())),
        "report": dg.MetadataValue.path(saved.files["report.html"]),
        "diff_vs_previous": dg.MetadataValue.md(diff_md(saved.diff, version)) if version > 1 else "first version",
        "inputs_changed_since_previous": inputs_changed_md(saved.inputs_changed, version),
        "inputs_snapshot": dg.MetadataValue.path(str(saved.inputs_snapshot)),
        **(tree_metadata(outcome, inputs.tree, inputs.target, request) if inputs.tree is not None else {}),
        "added": changes.get("added", 0),
        "removed": changes.get("removed", 0),
    }


def tree_metadata(outcome: SelectionOutcome, tree, target, request: SelectionRequest) -> dict:
    """Coverage per tree level, leaf entropy and, with a target profile, KL(target || selection) and of the pool."""
    metadata = {
        "coverage_by_level": dg.MetadataValue.json({str(level): round(share, 4) for level, share in coverage_by_level(outcome.coverage, tree.levels).items()}),
        "leaves_covered": int((outcome.leaf_mass > 0).sum()),
        "leaf_entropy": round(leaf_entropy(outcome.leaf_mass), 4),
        "tree_nodes": tree.n_nodes,
        "align": request.tags.align,
    }
    if target is not None:
        metadata["kl_target_selection"] = round(kl_divergence(target, outcome.leaf_mass, request.tags.eps), 4)
        metadata["kl_target_pool"] = round(kl_divergence(target, outcome.pool_leaf_mass, request.tags.eps), 4)
    return metadata


def inputs_changed_md(inputs_changed: list[dict] | None, version: int) -> dg.MetadataValue | str:
    if version == 1:
        return "first version"
    if inputs_changed is None:
        return f"v{version - 1} has no input snapshot (made before snapshots were kept)"
    if not inputs_changed:
        return f"no input of v{version - 1}'s members changed"
    return dg.MetadataValue.md(markdown_table(inputs_changed, list(inputs_changed[0])))


def diff_md(diff: list[dict], version: int, limit: int = 20) -> str:
    if not diff:
        return f"identical to version {version - 1}"
    lines = ["| change | sample_id | reason |", "|---|---|---|"]
    lines += [f"| {r['change']} | `{r['sample_id'][:12]}` | {r['reason']} |" for r in diff[:limit]]
    return "\n".join(lines + ([f"\n... {len(diff) - limit} more in table selection_diffs"] if len(diff) > limit else []))


def score_table(pool_scores: np.ndarray, selected: np.ndarray) -> str:
    def row(name, values):
        if not len(values):
            return f"| {name} | 0 | | | | |"
        q10, q50, q90 = np.quantile(values, [0.1, 0.5, 0.9])
        return f"| {name} | {len(values)} | {values.mean():.3f} | {q10:.3f} | {q50:.3f} | {q90:.3f} |"

    return "\n".join(["| set | n | mean | p10 | p50 | p90 |", "|---|---|---|---|---|---|", row("pool", pool_scores), row("selected", selected)])
