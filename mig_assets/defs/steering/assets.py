"""On-demand what-ifs over a selection spec: ``selection_sweep`` (a grid of budgets and parameters,
Pareto frontiers) and ``selection_stability`` (perturbed re-runs, their overlaps). Thin wrappers
over core/selection/sweep.py, core/selection/perturb.py and core/outputs/sweep_page.py; the pool,
graph and tree are loaded once per run."""

import dataclasses
import json
import time
import tracemalloc

import dagster as dg
from pydantic import Field

from mig_assets.core.mig.algorithm import select
from mig_assets.core.mig.problem import MigParams
from mig_assets.core.outputs.report import html_report, markdown_image, markdown_table, overlap_plot
from mig_assets.core.outputs.sweep_page import sweep_html, sweep_pngs
from mig_assets.core.selection.budget import resolve_count
from mig_assets.core.selection.inputs import load_graph, load_pool, load_target
from mig_assets.core.selection.perturb import graph_at_tau, jaccard_matrix, perturbed_trees, stable_share
from mig_assets.core.selection.run import mig_matrix, tags_problem
from mig_assets.core.selection.specs import SelectionSpec, load_specs
from mig_assets.core.selection.sweep import SweepGrid, sweep_mig, sweep_tags
from mig_assets.core.tags.modes import select as tags_select
from mig_assets.core.tags.params import TagsParams
from mig_assets.core.tags.tree import load_tree
from mig_assets.orchestration.partitions import pool_shards
from mig_assets.orchestration.provenance import record_settings
from mig_assets.resources import Warehouse
from mig_assets.settings import current_settings

POOL_DEPS = [
    dg.AssetDep("raw_pool", partition_mapping=dg.AllPartitionMapping()),
    dg.AssetDep("atomic_tags", partition_mapping=dg.AllPartitionMapping()),
    dg.AssetDep("quality_scores", partition_mapping=dg.AllPartitionMapping()),
    dg.AssetDep("label_graph"),
]


def spec_named(name: str, methods: tuple[str, ...]) -> SelectionSpec:
    specs = {spec.name: spec for spec in load_specs(current_settings().selections_path)}
    if name not in specs:
        raise ValueError(f"no selection spec {name!r}; the specs are {sorted(specs)}")
    if specs[name].method not in methods:
        raise ValueError(f"selection {name!r} is a {specs[name].method} spec; this report runs {' or '.join(methods)} specs")
    return specs[name]


def tags_params_of(spec: SelectionSpec) -> TagsParams:
    """The spec's TAGS parameters; unaligned unless it says ``align`` (as the selection assets' default)."""
    return TagsParams(**({"align": "none"} | {key: value for key, value in spec.params.items() if key in TagsParams.__dataclass_fields__}))


def mig_params_of(spec: SelectionSpec) -> MigParams:
    return MigParams(**{key: value for key, value in spec.params.items() if key in MigParams.__dataclass_fields__})


def spec_tags_problem(pool, tree, spec: SelectionSpec):
    """The TAGS problem with the spec's upward decay ``gamma`` (0.5) and ``level_weights`` (uniform)."""
    return tags_problem(pool, tree, spec.params.get("gamma", 0.5), spec.params.get("level_weights", "uniform"))


def next_output_dir(warehouse: Warehouse, kind: str, name: str):
    """exports/<kind>/<spec>/vNNNN/: one folder per run, numbered after the existing ones."""
    root = warehouse.layout.exports_dir / kind / name
    version = 1 + max((int(p.name[1:]) for p in root.glob("v[0-9]*") if p.name[1:].isdigit()), default=0)
    folder = root / f"v{version:04d}"
    folder.mkdir(parents=True)
    return folder


class SweepConfig(dg.Config):
    selection: str = Field(default="mig_selection", description="the MIG spec to sweep (its name in the selections file)")
    budget_counts: list[int] = Field(default=[], description="budgets as pick counts")
    budget_fractions: list[float] = Field(default=[0.01, 0.02, 0.05, 0.1], description="budgets as shares of the pool")
    budget_tokens: list[int] = Field(default=[], description="budgets in estimated tokens")
    phi_b: list[float] = Field(default=[0.6, 0.7, 0.8, 0.9], description="MIG specs: the exponent phi_b values")
    lam: list[float] = Field(default=[0.25, 1.0, 4.0], description="aligned TAGS specs: the KL penalty's lambda values")


@dg.asset(
    deps=[*POOL_DEPS, dg.AssetDep("knowledge_tree"), dg.AssetDep("target_profile")],
    group_name="steering",
    kinds={"plotly"},
    description="What-if sweep of a MIG spec over budgets x phi_b, or a TAGS spec over budgets x lam: objective, "
    "label or leaf coverage, mean quality and KL to the target against selected tokens with their Pareto frontiers; "
    "an interactive page (exports/sweep/<spec>/vN/sweep.html). On demand.",
)
def selection_sweep(context: dg.AssetExecutionContext, config: SweepConfig, warehouse: Warehouse) -> dg.MaterializeResult:
    record_settings(context)
    spec = spec_named(config.selection, ("mig", "tags"))
    budgets = tuple(
        [{"count": c} for c in config.budget_counts] + [{"fraction": f} for f in config.budget_fractions] + [{"tokens": t} for t in config.budget_tokens]
    )
    grid = SweepGrid(budgets=budgets, phi_b=tuple(config.phi_b), lam=tuple(config.lam))
    started = time.perf_counter()
    tracemalloc.start()
    with warehouse.connect() as con:  # the pool and the graph or tree, once for the whole grid
        pool, *_ = load_pool(con, None, context.instance.get_dynamic_partitions(pool_shards.name))
        if spec.method == "mig":
            params = mig_params_of(spec)
            points = sweep_mig(mig_matrix(pool, load_graph(con), params), pool.scores, pool.tokens, grid, params)
        else:
            params = tags_params_of(spec)
            tree, tree_info = load_tree(warehouse.layout.knowledge_tree_dir)
            target = load_target(con, tree_info["version"], required=params.align != "none")
            problem = spec_tags_problem(pool, tree, spec)
            points = sweep_tags(problem, pool.scores, pool.tokens, grid, params, target)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    seconds = time.perf_counter() - started
    folder = next_output_dir(warehouse, "sweep", spec.name)
    (folder / "sweep.html").write_text(sweep_html(points, f"what-if sweep of {spec.name} ({len(pool.sample_ids):,} samples)"), encoding="utf-8")
    (folder / "points.json").write_text(json.dumps(points, indent=1), encoding="utf-8")
    images = sweep_pngs(points)
    for name, png in images.items():
        (folder / f"{name}.png").write_bytes(png)
    columns = ["method", "phi_b" if spec.method == "mig" else "lam", "budget", "picks", "tokens", "objective", "coverage", "mean_quality", "kl"]
    return dg.MaterializeResult(
        metadata={
            "points": len(points),
            "table": dg.MetadataValue.md(markdown_table(points, columns)),
            "frontier_objective": dg.MetadataValue.md(markdown_table([p for p in points if p["frontier_objective"]], columns)),
            "plots": dg.MetadataValue.md("\n\n".join(markdown_image(png, name) for name, png in images.items())),
            "page": dg.MetadataValue.path(str(folder / "sweep.html")),
            "seconds": round(seconds, 3),
            "peak_memory_mib": round(peak / 2**20, 1),
        }
    )


class StabilityConfig(dg.Config):
    selection: str = Field(default="mig_selection", description="the MIG or TAGS spec to perturb (its name in the selections file)")
    tau_delta: float = Field(default=0.02, description="MIG: the label graph's threshold is re-run at tau - delta and tau + delta")
    tree_branching: float = Field(default=10, description="TAGS: the knowledge_tree branching the perturbed trees start from")
    tree_top_size: int = Field(default=20, description="TAGS: the knowledge_tree top_size the perturbed trees start from")
    tree_seed: int = Field(default=0, description="TAGS: the knowledge_tree seed; the perturbation uses seed + 1")


def mig_runs(con, warehouse: Warehouse, pool, spec: SelectionSpec, k: int, config: StabilityConfig) -> tuple[dict, list[dict]]:
    """MIG re-run with the label graph at tau +- delta; the base is the current graph."""
    graph = load_graph(con)
    [(tau,)] = con.execute("SELECT tau FROM label_graph_info").fetchall()
    params = mig_params_of(spec)
    graphs = {f"tau {tau:g} (base)": graph}
    for shifted in (tau - config.tau_delta, tau + config.tau_delta):
        graphs[f"tau {shifted:g}"] = graph_at_tau(graph, warehouse.layout.tag_embeddings_file, shifted)
    notes = [{"perturbation": "seed", "applied": "no: MIG's greedy is deterministic given its inputs (ties go to the earlier sample)"}]
    return {name: select(mig_matrix(pool, g, params), k, params).order for name, g in graphs.items()}, notes


def tags_runs(con, warehouse: Warehouse, pool, spec: SelectionSpec, k: int, config: StabilityConfig) -> tuple[dict, list[dict]]:
    """TAGS re-run on trees rebuilt with the next seed and with fewer and more leaves; the base is the current tree."""
    counts = dict(con.execute("SELECT tag, n_samples FROM tag_vocabulary").fetchall())
    base, _ = load_tree(warehouse.layout.knowledge_tree_dir)
    trees = {f"current tree, {base.n_leaves} leaves (base)": base}
    trees |= perturbed_trees(
        warehouse.layout.tag_embeddings_file, counts, branching=config.tree_branching, top_size=config.tree_top_size, seed=config.tree_seed
    )
    params = dataclasses.replace(tags_params_of(spec), align="none")
    notes = [{"perturbation": "alignment", "applied": "every run unaligned: a perturbed tree has no target profile grounded on its leaves"}]
    return {name: tags_select(spec_tags_problem(pool, tree, spec), k, params).order for name, tree in trees.items()}, notes


@dg.asset(
    deps=[*POOL_DEPS, dg.AssetDep("tag_embeddings"), dg.AssetDep("knowledge_tree")],
    group_name="steering",
    kinds={"duckdb"},
    description="How stable a spec's selection is: MIG re-run at tau +- delta (the graph rebuilt from the same tag "
    "embeddings), TAGS on trees with another seed and fewer or more leaves; the Jaccard overlap matrix and the share "
    "of picks every run keeps; a plot and a report page. On demand.",
)
def selection_stability(context: dg.AssetExecutionContext, config: StabilityConfig, warehouse: Warehouse) -> dg.MaterializeResult:
    record_settings(context)
    spec = spec_named(config.selection, ("mig", "tags"))
    if "tokens" in spec.budget:
        raise ValueError(f"selection {spec.name!r} has a token budget; the stability report needs a count or fraction budget")
    with warehouse.connect() as con:
        pool, *_ = load_pool(con, None, context.instance.get_dynamic_partitions(pool_shards.name))
        k = resolve_count(len(pool.sample_ids), spec.budget.get("count"), spec.budget.get("fraction"))
        selections, notes = (mig_runs if spec.method == "mig" else tags_runs)(con, warehouse, pool, spec, k, config)
    names, matrix = jaccard_matrix(selections)
    share = stable_share(selections, names[0])
    plot = overlap_plot(names, {(a, b): float(matrix[i, j]) for i, a in enumerate(names) for j, b in enumerate(names)})
    table = [{"run": a, **{b: round(float(matrix[i, j]), 4) for j, b in enumerate(names)}} for i, a in enumerate(names)]
    folder = next_output_dir(warehouse, "stability", spec.name)
    summary = {"selection": spec.name, "picks": k, "pool size": len(pool.sample_ids), "stable under every perturbation": f"{share:.2%}"}
    (folder / "report.html").write_text(
        html_report(f"stability of {spec.name}", summary, {"overlap": plot}, {"Jaccard overlap": table, "perturbations": notes}), encoding="utf-8"
    )
    (folder / "overlap.png").write_bytes(plot)
    return dg.MaterializeResult(
        metadata={
            "stable_share": round(share, 4),
            "jaccard": dg.MetadataValue.md(markdown_table(table, ["run", *names])),
            "plot": dg.MetadataValue.md(markdown_image(plot, "overlap")),
            "report": dg.MetadataValue.path(str(folder / "report.html")),
            "runs": len(names),
            "picks": k,
        }
    )
