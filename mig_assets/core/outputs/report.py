"""Pictures and a standalone HTML report for a selection version (matplotlib, no server needed).

Plots are PNG bytes; ``markdown_image`` inlines one as a data URI so it shows in Dagster's
metadata panel, and ``html_report`` writes one self-contained page per selection version.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mig_assets.core.tagging.rows import value_counter


def new_figure():
    """A matplotlib module (Agg backend) and a fresh (figure, axes) pair of the report size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(figsize=(6.4, 3.2), dpi=80)


def png_bytes(plt, fig) -> bytes:
    """The figure as PNG bytes, without a version string (stable bytes); closes it."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", metadata={"Software": None})  # no version string: stable bytes
    plt.close(fig)
    return buffer.getvalue()


def curve_plot(objective: np.ndarray, gains: np.ndarray) -> bytes:
    """Objective E(S) and the gain at pick time against the pick rank."""
    plt, (fig, ax) = new_figure()
    ranks = np.arange(1, len(objective) + 1)
    ax.plot(ranks, objective, color="tab:blue", label="objective E(S)")
    ax.set_xlabel("pick")
    ax.set_ylabel("objective", color="tab:blue")
    twin = ax.twinx()
    twin.plot(ranks, gains, color="tab:orange", label="gain at pick")
    twin.set_ylabel("gain", color="tab:orange")
    ax.set_title("objective and gain curves")
    return png_bytes(plt, fig)


def distribution_plot(pool: Counter, selected: Counter, top: int = 20, title: str = "tag frequency") -> bytes:
    """Share of samples carrying each of the pool's most frequent tags, pool vs selection."""
    plt, (fig, ax) = new_figure()
    names = [name for name, _ in pool.most_common(top)]
    pool_total, selected_total = max(sum(pool.values()), 1), max(sum(selected.values()), 1)
    positions = np.arange(len(names))
    ax.bar(positions - 0.2, [pool[n] / pool_total for n in names], width=0.4, label="pool")
    ax.bar(positions + 0.2, [selected[n] / selected_total for n in names], width=0.4, label="selected")
    ax.set_xticks(positions, [n[:18] for n in names], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("share of tag assignments")
    ax.set_title(f"{title}: pool vs selected")
    ax.legend(fontsize=7)
    return png_bytes(plt, fig)


def score_plot(pool: np.ndarray, selected: np.ndarray) -> bytes:
    plt, (fig, ax) = new_figure()
    bins = np.histogram_bin_edges(pool, bins=30) if len(pool) else 10
    ax.hist(pool, bins=bins, alpha=0.6, density=True, label="pool")
    ax.hist(selected, bins=bins, alpha=0.6, density=True, label="selected")
    ax.set_xlabel("quality weight")
    ax.set_title("quality: pool vs selected")
    ax.legend(fontsize=7)
    return png_bytes(plt, fig)


def level_coverage_plot(coverage: dict[int, float], pool_coverage: dict[int, float] | None = None) -> bytes:
    """Share of tree nodes of each level (1 = leaves) that the selection (and the pool) covers."""
    plt, (fig, ax) = new_figure()
    levels = sorted(coverage)
    positions = np.arange(len(levels))
    if pool_coverage is not None:
        ax.bar(positions - 0.2, [pool_coverage.get(h, 0.0) for h in levels], width=0.4, label="pool")
        ax.bar(positions + 0.2, [coverage[h] for h in levels], width=0.4, label="selected")
        ax.legend(fontsize=7)
    else:
        ax.bar(positions, [coverage[h] for h in levels], width=0.6)
    ax.set_xticks(positions, [f"level {h}" + (" (leaves)" if h == 1 else "") for h in levels], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of nodes covered")
    ax.set_title("knowledge tree coverage by level")
    return png_bytes(plt, fig)


def kl_plot(kl: np.ndarray, target: np.ndarray, selected: np.ndarray, pool: np.ndarray, names: list[str], top: int = 15) -> bytes:
    """Left: KL(target || selection) after each pick. Right: leaf shares of the target's top leaves
    in the target, the pool and the selection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.4), dpi=80)
    left.plot(np.arange(1, len(kl) + 1), kl, color="tab:red")
    left.set_xlabel("pick")
    left.set_ylabel("KL(target || selection), nats")
    left.set_title("alignment to the target")
    leaves = np.argsort(-target, kind="stable")[:top]
    positions = np.arange(len(leaves))

    def share(mass):
        return mass[leaves] / mass.sum() if mass.sum() > 0 else np.zeros(len(leaves))

    right.bar(positions - 0.27, target[leaves], width=0.27, label="target")
    right.bar(positions, share(pool), width=0.27, label="pool")
    right.bar(positions + 0.27, share(selected), width=0.27, label="selected")
    right.set_xticks(positions, [names[v][:18] for v in leaves], rotation=60, ha="right", fontsize=7)
    right.set_ylabel("share of leaf mass")
    right.set_title("target's top leaves")
    right.legend(fontsize=7)
    return png_bytes(plt, fig)


def target_plot(share: np.ndarray, names: list[str], top: int = 20) -> bytes:
    """The target distribution's largest leaves."""
    plt, (fig, ax) = new_figure()
    leaves = np.argsort(-share, kind="stable")[:top]
    ax.bar(np.arange(len(leaves)), share[leaves])
    ax.set_xticks(np.arange(len(leaves)), [names[v][:18] for v in leaves], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("target share")
    ax.set_title("target profile: top leaves")
    return png_bytes(plt, fig)


COMPARED_METRICS = (
    "mig_objective",
    "tags_objective",
    "label_coverage",
    "leaf_coverage",
    "mean_quality",
    "embedding_diversity",
    "kl_to_target",
)


def comparison_plot(table: list[dict]) -> bytes:
    """Each metric of each method relative to the best method on that metric (KL: lower is better,
    so the best is the smallest and the bar shows min/value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in COMPARED_METRICS if any(row.get(m) is not None for row in table)]
    fig, ax = plt.subplots(figsize=(9.6, 3.6), dpi=80)
    width = 0.8 / max(len(table), 1)
    for i, row in enumerate(table):
        heights = []
        for metric in metrics:
            values = [r[metric] for r in table if r.get(metric) is not None and np.isfinite(r[metric])]
            value = row.get(metric)
            if value is None or not np.isfinite(value) or not values:
                heights.append(0.0)
            elif metric == "kl_to_target":
                heights.append(min(values) / value if value > 0 else 1.0)
            else:
                heights.append(value / max(values) if max(values) > 0 else 0.0)
        ax.bar(np.arange(len(metrics)) + (i - (len(table) - 1) / 2) * width, heights, width=width, label=row["method"])
    ax.set_xticks(np.arange(len(metrics)), [m.replace("_", " ") for m in metrics], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("relative to the best method")
    ax.set_title("methods compared at one budget")
    ax.legend(fontsize=7, ncol=4)
    return png_bytes(plt, fig)


def overlap_plot(methods: list[str], jaccard: dict[tuple[str, str], float]) -> bytes:
    """Jaccard overlap between the methods' selections."""
    plt, (fig, ax) = new_figure()
    matrix = np.array([[jaccard.get((a, b), 1.0 if a == b else 0.0) for b in methods] for a in methods])
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(methods)), methods, fontsize=7)
    for i in range(len(methods)):
        for j in range(len(methods)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6, color="white" if matrix[i, j] < 0.6 else "black")
    fig.colorbar(image, ax=ax)
    ax.set_title("overlap (Jaccard)")
    return png_bytes(plt, fig)


def format_figure(value, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` significant digits (what the measures can tell apart), None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if np.isfinite(value) else "nan"
    return str(value)


def markdown_table(rows: list[dict], columns: list[str], digits: int = 4) -> str:
    """A markdown table of ``columns``; floats rounded (:func:`format_figure`), None shown as a dash."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_figure(row.get(c), digits) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def markdown_image(png: bytes, alt: str) -> str:
    return f"![{alt}]({data_uri(png)})"


def html_report(title: str, summary: dict, plots: dict[str, bytes], tables: dict[str, list[dict]]) -> str:
    """One self-contained HTML page: a summary table, the plots inline, then named tables."""

    def table(rows: list[dict]) -> str:
        if not rows:
            return "<p><em>none</em></p>"
        head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(format_figure(v))}</td>" for v in row.values()) + "</tr>" for row in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;font-size:90%;text-align:left}img{max-width:100%}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
        table([{"field": k, "value": v} for k, v in summary.items()]),
    ]
    parts += [f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='{data_uri(png)}'>" for name, png in plots.items()]
    parts += [f"<h2>{html.escape(name)}</h2>{table(rows)}" for name, rows in tables.items()]
    parts.append("</body></html>")
    return "\n".join(parts)


def tag_counts(tags: pa.ListArray, rows: np.ndarray | None = None) -> Counter:
    """Occurrences of each tag over the samples (over ``rows`` only, in that order, when given), in
    first-seen order as a Counter of the lists would have them (ties of most_common keep it). In
    Arrow: a hash count of the flattened lists."""
    return value_counter(pc.list_flatten(tags if rows is None else tags.take(pa.array(rows, pa.int64()))))


def selection_plots(method: str, pool, outcome, tree=None, target=None) -> dict[str, bytes]:
    """A selection version's plots: tag distribution and quality of the selection against the pool,
    the objective and gain curves (MIG, TAGS), coverage per tree level and KL to the target (TAGS)."""
    from mig_assets.core.tags.information import coverage_by_level

    plots = {
        "tag_distribution": distribution_plot(tag_counts(pool.tag_array), tag_counts(pool.tag_array, outcome.order)),
        "quality": score_plot(pool.scores, pool.scores[outcome.order]),
    }
    if method in ("mig", "tags") and len(outcome.order):
        plots["curves"] = curve_plot(outcome.objective, outcome.gains)
    if tree is not None:
        pool_coverage = np.asarray(outcome.sample_matrix.sum(axis=0)).ravel()
        plots["tree_coverage"] = level_coverage_plot(coverage_by_level(outcome.coverage, tree.levels), coverage_by_level(pool_coverage, tree.levels))
        if target is not None and outcome.kl is not None and len(outcome.order):
            plots["kl_vs_target"] = kl_plot(outcome.kl, target, outcome.leaf_mass, outcome.pool_leaf_mass, tree.names)
    return plots


def selection_report(name: str, method: str, budget: dict, version: int, pool, outcome, score_origin: str, plots, diff, inputs_changed, exclusions) -> str:
    """A selection version's HTML page: summary, plots, top tags, changes, changed inputs and what
    curation left out (``exclusions``: a :class:`~mig_assets.core.curation.exclusions.Exclusions`)."""
    selected_tags = tag_counts(pool.tag_array, outcome.order)
    summary = {
        "selection": name,
        "version": version,
        "method": method,
        "budget": budget,
        "pool size": len(pool.sample_ids),
        "selected": len(outcome.order),
        "selected tokens (est.)": int(pool.tokens[outcome.order].sum()),
        "quality weights": score_origin,
        **{name.replace("_", " "): n for name, n in exclusions.counts().items()},
    }
    if outcome.kl is not None and len(outcome.kl):
        summary["KL(target || selection), nats"] = round(float(outcome.kl[-1]), 4)
    top = [{"tag": tag, "selected samples": n} for tag, n in selected_tags.most_common(25)]
    changes = [{"change": r["change"], "sample_id": r["sample_id"], "reason": r["reason"]} for r in diff]
    tables = {"top tags in the selection": top, "changes since the previous version": changes, "excluded before selection": exclusions.report_rows()}
    if inputs_changed is not None:
        tables[f"inputs changed since version {version - 1}"] = inputs_changed
    return html_report(f"{name} v{version}", summary, plots, tables)
