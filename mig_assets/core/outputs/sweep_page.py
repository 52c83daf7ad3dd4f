"""The what-if sweep's figures: an interactive page (Plotly) and the same panels as PNGs (matplotlib).

One panel per metric of ``core/selection/sweep.py`` against selected tokens; one series per
parameter setting (method and ``phi_b`` / ``lam``); the Pareto frontier drawn as a line. Hovering
a point of the page shows its method, parameters, budget, picks, tokens and metric. Plotly
(pinned 7.1.0) writes a self-contained HTML file with its JavaScript inlined, so the page opens
offline.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mig_assets.core.outputs.report import new_figure, png_bytes
from mig_assets.core.selection.sweep import METRICS

LABELS = {"objective": "objective E(S)", "coverage": "label / leaf coverage", "mean_quality": "mean quality", "kl": "KL(target || S)"}
PARAMETERS = ("phi_b", "lam")


def series_name(point: dict) -> str:
    return " ".join([point["method"], *(f"{name}={point[name]:g}" for name in PARAMETERS if point.get(name) is not None)])


def _metrics(points: list[dict]) -> list[str]:
    return [m for m in METRICS if any(p.get(m) is not None for p in points)]


def sweep_html(points: list[dict], title: str) -> str:
    """A standalone interactive page: one panel per metric against tokens, hover shows the parameters."""
    metrics = _metrics(points)
    columns = 2 if len(metrics) > 1 else 1
    rows = (len(metrics) + columns - 1) // columns
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=[f"{LABELS[m]} vs selected tokens" for m in metrics])
    names = sorted({series_name(p) for p in points})
    for index, metric in enumerate(metrics):
        row, col = index // columns + 1, index % columns + 1
        for name in names:
            series = sorted((p for p in points if series_name(p) == name and p.get(metric) is not None), key=lambda p: p["tokens"])
            fig.add_trace(
                go.Scatter(
                    x=[p["tokens"] for p in series],
                    y=[p[metric] for p in series],
                    mode="markers",
                    name=name,
                    legendgroup=name,
                    showlegend=index == 0,
                    customdata=[[p["budget"], p["picks"]] for p in series],
                    hovertemplate=f"{name}<br>budget %{{customdata[0]}} (%{{customdata[1]}} picks)<br>tokens %{{x}}<br>{LABELS[metric]} %{{y:.4g}}<extra></extra>",
                ),
                row=row,
                col=col,
            )
        frontier = sorted((p for p in points if p.get(f"frontier_{metric}")), key=lambda p: p["tokens"])
        fig.add_trace(
            go.Scatter(
                x=[p["tokens"] for p in frontier],
                y=[p[metric] for p in frontier],
                mode="lines",
                line={"color": "black", "dash": "dot"},
                name="Pareto frontier",
                legendgroup="frontier",
                showlegend=index == 0,
                text=[series_name(p) + f", budget {p['budget']}" for p in frontier],
                hovertemplate="frontier: %{text}<br>tokens %{x}<br>%{y:.4g}<extra></extra>",
            ),
            row=row,
            col=col,
        )
        fig.update_xaxes(title_text="selected tokens (est.)", row=row, col=col)
    fig.update_layout(title=title, height=420 * rows, template="plotly_white")
    return fig.to_html(include_plotlyjs=True, full_html=True)


def sweep_pngs(points: list[dict]) -> dict[str, bytes]:
    """The same panels as PNG bytes (for the materialization metadata), one per metric."""
    images = {}
    for metric in _metrics(points):
        plt, (fig, ax) = new_figure()
        for name in sorted({series_name(p) for p in points}):
            series = sorted((p for p in points if series_name(p) == name and p.get(metric) is not None), key=lambda p: p["tokens"])
            ax.plot([p["tokens"] for p in series], [p[metric] for p in series], "o", label=name)
        frontier = sorted((p for p in points if p.get(f"frontier_{metric}")), key=lambda p: p["tokens"])
        ax.plot([p["tokens"] for p in frontier], [p[metric] for p in frontier], "k:", label="Pareto frontier")
        ax.set_xlabel("selected tokens (est.)")
        ax.set_ylabel(LABELS[metric])
        ax.legend(fontsize="small")
        images[f"sweep_{metric}"] = png_bytes(plt, fig)
    return images
