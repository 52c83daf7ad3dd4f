"""``label_graph`` and the selection assets, one per named spec (an asset factory)."""

import dataclasses
import datetime as dt
import json
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from pydantic import Field

from mig_assets.core.embedding.encoder import arrow_to_vectors
from mig_assets.core.mig.algorithm import MigParams, build_label_graph
from mig_assets.core.mig.reference_jsonl import load_valid_tags
from mig_assets.core.outputs.export import write_export
from mig_assets.core.outputs.report import (
    curve_plot,
    distribution_plot,
    html_report,
    kl_plot,
    level_coverage_plot,
    markdown_image,
    markdown_table,
    score_plot,
)
from mig_assets.core.selection.constraint_spec import constraint_report, leaf_membership, resolve_constraints, tag_membership
from mig_assets.core.selection.lineage import (
    SCORED_QUALITY_SQL,
    changes_summary,
    current_inputs,
    graph_path,
    inputs_path,
    member_changes,
    read_facts,
    upstream_changes,
    version_inputs,
    write_graph,
    write_inputs,
)
from mig_assets.core.selection.run import (
    EMBEDDING_METHODS,
    Budget,
    LabelGraph,
    PoolArrays,
    SelectionOutcome,
    quality_scores,
    run_selection,
)
from mig_assets.core.selection.specs import SelectionSpec, load_specs
from mig_assets.core.selection.stability import previous_version_start
from mig_assets.core.store.catalog import has_relation, insert_table, replace_table
from mig_assets.core.tagging.canonical import normalize_tag, policy_of_backend
from mig_assets.core.tags.information import coverage_by_level, kl_divergence, leaf_entropy
from mig_assets.core.tags.params import TagsParams
from mig_assets.core.tags.tree import load_tree
from mig_assets.orchestration.automation import re_select
from mig_assets.orchestration.partitions import pool_shards
from mig_assets.orchestration.provenance import latest_materializations, record_settings, settings_record
from mig_assets.resources import Warehouse
from mig_assets.settings import current_settings

SELECTION_CODE_VERSION = "1"
CURVE_POINTS = 20


class LabelGraphConfig(dg.Config):
    tau: float = Field(default=0.9, description="keep label pairs with cosine similarity >= tau (self loops always kept)")
    valid_tag_path: str = Field(default="", description="JSON list of allowed tags (e.g. InsTag's valid_tag_path.json); empty: all tags")


def tag_policies(con) -> set[str]:
    """The tag policies of the pool's tags (core/tagging/canonical.py), from the backends that wrote atomic_tags."""
    if not has_relation(con, "atomic_tags"):
        return set()
    return {policy_of_backend(backend) for (backend,) in con.execute("SELECT DISTINCT backend FROM atomic_tags").fetchall()}


def valid_labels(valid_tags: frozenset[str], policies: set[str]) -> set[str]:
    """Tags a valid-tag file admits: as written (the reference: the file alone decides, for imported
    tags) and, when LLM tags are in the pool, the normalized forms of its entries too."""
    if policies <= {"as_written"}:
        return set(valid_tags)
    return set(valid_tags) | {c for c in map(normalize_tag, valid_tags) if c is not None}


@dg.asset(
    deps=["tag_embeddings"],
    group_name="selection",
    kinds={"duckdb", "scipy"},
    code_version="1",
    pool="duckdb",
    automation_condition=re_select,
    description="The MIG label graph: canonical tags as nodes, cosine similarity >= tau as weighted edges "
    "(tables label_graph_labels, label_graph_edges, label_graph_info).",
)
def label_graph(context: dg.AssetExecutionContext, config: LabelGraphConfig, warehouse: Warehouse) -> dg.MaterializeResult:
    record_settings(context)
    table = pq.read_table(warehouse.layout.tag_embeddings_file)
    row_of = {tag: i for i, tag in enumerate(table.column("tag").to_pylist())}
    all_vectors = arrow_to_vectors(table.column("embedding"))
    model_id = table.column("model_id")[0].as_py() if table.num_rows else ""
    with warehouse.connect() as con:
        counts = dict(con.execute("SELECT tag, n_samples FROM tag_vocabulary").fetchall())
        policies = tag_policies(con)
    labels = sorted(counts)  # the reference's label universe: sorted tags that occur in the pool
    if config.valid_tag_path:
        valid = valid_labels(load_valid_tags(config.valid_tag_path), policies)
        context.log.info(f"{sum(l in valid for l in labels):,} of {len(labels):,} tags are in {config.valid_tag_path}")
        labels = [label for label in labels if label in valid]
    missing = [label for label in labels if label not in row_of]
    if missing:
        raise ValueError(f"{len(missing)} graph label(s) have no embedding in tag_embeddings: {missing[:10]}")
    vectors = all_vectors[[row_of[label] for label in labels]] if labels else np.zeros((0, 1), np.float32)
    W = build_label_graph(vectors, config.tau) if labels else sp.csr_array((0, 0), dtype=np.float32)
    coo = W.tocoo()
    degree = np.diff(W.indptr) - 1 if labels else np.zeros(0, dtype=np.int64)  # neighbours besides itself
    with warehouse.connect() as con:
        nodes = pa.table(
            {
                "label_id": pa.array(range(len(labels)), pa.int64()),
                "label": labels,
                "n_samples": pa.array([counts.get(label, 0) for label in labels], pa.int64()),
                "degree": pa.array(degree, pa.int64()),
            }
        )
        edges = pa.table({"src": pa.array(coo.row, pa.int64()), "dst": pa.array(coo.col, pa.int64()), "weight": pa.array(coo.data, pa.float32())})
        info = pa.table({"tau": [config.tau], "valid_tag_path": [config.valid_tag_path], "model_id": [model_id], "run_id": [context.run.run_id]})
        for name, arrow in (("label_graph_labels", nodes), ("label_graph_edges", edges), ("label_graph_info", info)):
            replace_table(con, name, arrow)
    n_edges = int((coo.row != coo.col).sum()) // 2
    return dg.MaterializeResult(
        metadata={
            "labels": len(labels),
            "dagster/column_lineage": dg.TableColumnLineage(
                deps_by_column={
                    "label": [dg.TableColumnDep(asset_key=dg.AssetKey("tag_embeddings"), column_name="tag")],
                    "weight": [dg.TableColumnDep(asset_key=dg.AssetKey("tag_embeddings"), column_name="embedding")],
                }
            ),
            "edges": n_edges,
            "mean_degree": round(float(degree.mean()), 3) if len(degree) else 0.0,
            "isolated_labels": int((degree == 0).sum()),
            "threshold": config.tau,
            "embedding_model": model_id,
            "valid_tag_path": config.valid_tag_path or "(all tags)",
        }
    )


class SelectionConfig(dg.Config):
    """Budget (exactly one of count, fraction, tokens) and method parameters; defaults come from the spec."""

    budget_count: int | None = None
    budget_fraction: float | None = None
    budget_tokens: int | None = None
    prop_weight: float = 1.0
    norm: bool = False
    phi: str = "pow"
    phi_a: float = 1e-6
    phi_b: float = 0.8
    phi_alpha: float = 1.0
    gain: str = "gradient"
    seed: int = 42
    # TAGS
    gamma: float = Field(default=0.5, description="TAGS: upward decay of a leaf's mass to its ancestors")
    level_weights: str = Field(default="uniform", description="TAGS: beta per level, uniform (1) or equal (1/|level|)")
    align: str = Field(default="none", description="TAGS alignment to target_profile: none | penalty | hard | quota")
    lam: float = Field(default=1.0, description="TAGS penalty: F(S) = E(S)/E(pool) - lam * KL(target || S)")
    eps: float = Field(default=1e-3, description="TAGS: smoothing of the selection's leaf distribution")
    kl_cap: float = Field(default=0.1, description="TAGS hard: final KL cap")
    kl_cap_start: float = Field(default=1.0, description="TAGS hard: KL cap at the first pick")
    kl_cap_decay: float = Field(default=0.5, description="TAGS hard: share of the budget over which the cap decays")
    # baselines
    diversity_threshold: float = Field(default=0.9, description="deita: skip a sample whose cosine to a selected one exceeds this")

    def budget(self) -> Budget:
        return Budget(count=self.budget_count, fraction=self.budget_fraction, tokens=self.budget_tokens)

    def mig_params(self) -> MigParams:
        return MigParams(
            prop_weight=self.prop_weight,
            norm=self.norm,
            phi=self.phi,
            phi_a=self.phi_a,
            phi_b=self.phi_b,
            phi_alpha=self.phi_alpha,
            gain=self.gain,
        )

    def tags_params(self) -> TagsParams:
        return TagsParams(
            phi_a=self.phi_a,
            phi_b=self.phi_b,
            align=self.align,
            lam=self.lam,
            eps=self.eps,
            kl_cap=self.kl_cap,
            kl_cap_start=self.kl_cap_start,
            kl_cap_decay=self.kl_cap_decay,
        )


def config_class_for(spec: SelectionSpec) -> type[SelectionConfig]:
    """A SelectionConfig subclass whose defaults are the spec's budget, params and seed."""
    defaults = {f"budget_{kind}": value for kind, value in spec.budget.items()} | dict(spec.params) | {"seed": spec.seed}
    unknown = set(defaults) - set(SelectionConfig.model_fields)
    if unknown:
        raise ValueError(f"selection {spec.name!r}: unknown parameters {sorted(unknown)}")
    annotations = {name: SelectionConfig.model_fields[name].annotation for name in defaults}
    return type(f"{spec.name.title().replace('_', '')}Config", (SelectionConfig,), {"__annotations__": annotations, **defaults})


def load_pool(con, layout=None, shard_order: list[str] = ()) -> tuple[PoolArrays, str, float, int]:
    """Kept samples in input order (shards in ``shard_order``, the partitions' registration order, then
    any other shard by key; lines in file order) with their tags and weights (and embeddings, given
    ``layout``); samples whose tagging failed are left out. Input order is the MIG reference's: its
    greedy breaks ties to the first sample of the file. Returns the arrays, the origin of the weights,
    the weight given to samples without one, and the number left out."""
    tags_sql = (
        "LEFT JOIN atomic_tags t USING (sample_id)"
        if has_relation(con, "atomic_tags")
        else "LEFT JOIN (SELECT NULL::VARCHAR AS sample_id, NULL::VARCHAR[] AS tags, NULL::VARCHAR AS status) t USING (sample_id)"
    )
    scored_sql = (
        f"LEFT JOIN ({SCORED_QUALITY_SQL}) q USING (sample_id)"
        if has_relation(con, "quality_scores")
        else "LEFT JOIN (SELECT NULL::VARCHAR AS sample_id, NULL::DOUBLE AS score, NULL::VARCHAR AS scorer) q USING (sample_id)"
    )
    rows = con.execute(
        f"""
        SELECT s.sample_id, coalesce(t.tags, []::VARCHAR[]), s.imported_quality, s.n_tokens_est, t.status, q.score, q.scorer
        FROM samples s {tags_sql} {scored_sql}
        ORDER BY coalesce(list_position($shard_order::VARCHAR[], s.shard), 2147483647), s.shard, s.line_no
        """,
        {"shard_order": list(shard_order)},
    ).fetchall()
    failed = sum(1 for r in rows if r[4] == "failed")
    rows = [r for r in rows if r[4] != "failed"]
    scores, origin, fill = quality_scores([r[2] for r in rows], [r[5] for r in rows], sorted({r[6] for r in rows if r[6]}))
    pool = PoolArrays(
        sample_ids=[r[0] for r in rows],
        tags=[list(r[1]) for r in rows],
        scores=scores,
        tokens=np.array([r[3] for r in rows], dtype=np.int64),
    )
    if layout is not None:
        pool.embeddings = load_embeddings(layout, pool.sample_ids)
    return pool, origin, fill, failed


def load_embeddings(layout, sample_ids: list[str]) -> np.ndarray:
    """The sample_embeddings rows of ``sample_ids``, in that order; an error names what is missing."""
    files = layout.shard_files("sample_embeddings")
    if not files:
        raise ValueError("no sample embeddings: materialize sample_embeddings for the pool's shards first")
    table = pa.concat_tables(pq.read_table(f, columns=["sample_id", "embedding"]) for f in files)
    row_of = {sid: i for i, sid in enumerate(table.column("sample_id").to_pylist())}
    missing = [sid for sid in sample_ids if sid not in row_of]
    if missing:
        raise ValueError(f"{len(missing)} pool samples have no embedding (e.g. {missing[:3]}): materialize sample_embeddings for every shard")
    return arrow_to_vectors(table.column("embedding"))[[row_of[sid] for sid in sample_ids]]


def load_graph(con) -> LabelGraph:
    labels = [label for (label,) in con.execute("SELECT label FROM label_graph_labels ORDER BY label_id").fetchall()]
    src, dst, weight = con.execute("SELECT list(src), list(dst), list(weight) FROM label_graph_edges").fetchall()[0]
    W = sp.csr_array(
        (np.asarray(weight or [], np.float32), (np.asarray(src or [], np.int64), np.asarray(dst or [], np.int64))),
        shape=(len(labels), len(labels)),
    )
    return LabelGraph(labels, W)


SELECTION_TABLES = """
CREATE TABLE IF NOT EXISTS selections (
    selection VARCHAR, version INTEGER, method VARCHAR, budget VARCHAR, n_selected BIGINT, n_pool BIGINT,
    config JSON, score_origin VARCHAR, score_fill DOUBLE, objective DOUBLE, export_dir VARCHAR, run_id VARCHAR,
    created_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS selection_members (
    selection VARCHAR, version INTEGER, rank INTEGER, sample_id VARCHAR, gain DOUBLE, objective DOUBLE,
    top_labels VARCHAR[]);
CREATE TABLE IF NOT EXISTS selection_coverage (selection VARCHAR, version INTEGER, label VARCHAR, coverage DOUBLE);
CREATE TABLE IF NOT EXISTS selection_diffs (
    selection VARCHAR, version INTEGER, previous_version INTEGER, sample_id VARCHAR, change VARCHAR, reason VARCHAR);
"""


def build_selection_asset(spec: SelectionSpec) -> dg.AssetsDefinition:
    deps = [
        dg.AssetDep("raw_pool", partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep("atomic_tags", partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep("quality_scores", partition_mapping=dg.AllPartitionMapping()),  # the sample weights
    ]
    if spec.method == "mig":
        deps.append(dg.AssetDep(label_graph))
    if spec.method == "tags":
        deps += [dg.AssetDep("knowledge_tree"), dg.AssetDep("target_profile")]  # the target: to align, or to report KL
    if spec.method in EMBEDDING_METHODS:
        deps.append(dg.AssetDep("sample_embeddings", partition_mapping=dg.AllPartitionMapping()))
    config_class = config_class_for(spec)

    @dg.asset(
        name=spec.name,
        deps=deps,
        group_name="selection",
        kinds={"duckdb", "parquet"},
        code_version=SELECTION_CODE_VERSION,
        pool="duckdb",
        automation_condition=re_select,
        tags={"mig/method": spec.method},
        description=spec.description or f"{spec.method} selection ({', '.join(f'{k}={v}' for k, v in spec.budget.items())})",
    )
    def selection_asset(context: dg.AssetExecutionContext, config: config_class, warehouse: Warehouse) -> dg.MaterializeResult:  # type: ignore[valid-type]
        record_settings(context)
        return materialize_selection(context, spec, config, warehouse)

    return selection_asset


def materialize_selection(context: dg.AssetExecutionContext, spec: SelectionSpec, config: SelectionConfig, warehouse: Warehouse) -> dg.MaterializeResult:
    layout = warehouse.layout
    started = time.perf_counter()
    with warehouse.connect() as con:
        pool, score_origin, score_fill, failed = load_pool(
            con, layout if spec.method in EMBEDDING_METHODS else None, context.instance.get_dynamic_partitions(pool_shards.name)
        )
        graph = load_graph(con) if spec.method == "mig" else None
        warm = previous_version_start(con, layout.warehouse_dir, spec.name, pool.sample_ids, spec.stability) if spec.stability is not None else None
    tree, target = None, None
    if spec.method == "tags":
        tree, tree_info = load_tree(layout.knowledge_tree_dir)
        with warehouse.connect() as con:
            target = load_target(con, tree_info["version"], required=config.align != "none")
    constraints = None
    if spec.constraints is not None:  # resolved over the catalog: ids files, predicates, groups, tag (MIG) or leaf (TAGS) bounds
        if tree is not None:
            labels, kind = (lambda names: leaf_membership(tree, pool.tags, names)), "leaf"
        else:
            labels, kind = (lambda names: tag_membership(pool.tags, names)), "tag"
        with warehouse.connect() as con:
            constraints = resolve_constraints(con, spec.constraints, pool.sample_ids, labels, kind)
    loaded = time.perf_counter()
    params = config.mig_params()
    outcome = run_selection(
        spec.method,
        pool,
        config.budget(),
        graph=graph,
        params=params,
        seed=config.seed,
        tree=tree,
        tags_params=config.tags_params(),
        gamma=config.gamma,
        level_weights=config.level_weights,
        target=target,
        diversity_threshold=config.diversity_threshold,
        constraints=constraints,
        warm=warm,
    )
    selected = time.perf_counter()

    with warehouse.connect() as con:
        con.execute(SELECTION_TABLES)
        version = con.execute("SELECT coalesce(max(version), 0) + 1 FROM selections WHERE selection = ?", [spec.name]).fetchall()[0][0]
        export_dir = layout.exports_dir / spec.name / f"v{version:04d}"
        ids = [pool.sample_ids[i] for i in outcome.order]
        members = pa.table(
            {
                "selection": [spec.name] * len(ids),
                "version": pa.array([version] * len(ids), pa.int32()),
                "rank": pa.array(range(1, len(ids) + 1), pa.int32()),
                "sample_id": ids,
                "gain": pa.array(outcome.gains, pa.float64()),
                "objective": pa.array(outcome.objective, pa.float64()),
                "top_labels": pa.array(outcome.top_labels or [[] for _ in ids], pa.list_(pa.string())),
            }
        )
        part = f"{spec.name}-v{version:04d}"  # a retried version replaces its own rows
        insert_table(con, "selection_members", members, part=part)
        if outcome.coverage is not None and (graph is not None or tree is not None):
            # the final s (MIG, by label) or x (TAGS, by tree node id), to explain why a sample was not picked
            covered = np.flatnonzero(outcome.coverage)
            coverage = pa.table(
                {
                    "selection": [spec.name] * len(covered),
                    "version": pa.array([version] * len(covered), pa.int32()),
                    "label": [graph.labels[j] for j in covered] if graph is not None else [str(v) for v in covered],
                    "coverage": pa.array(outcome.coverage[covered], pa.float64()),
                }
            )
            insert_table(con, "selection_coverage", coverage, part=part)
        messages = con.execute(
            "SELECT m.rank, s.sample_id, s.messages FROM selection_members m JOIN samples s USING (sample_id) "
            "WHERE m.selection = ? AND m.version = ? ORDER BY m.rank",
            [spec.name, version],
        ).fetchall()
        reasons = {pool.sample_ids[row]: reason for row, reason in outcome.reasons.items()}
        diff = _diff_against_previous(con, spec.name, version, ids, pool, outcome, reasons)
        if diff:
            insert_table(con, "selection_diffs", pa.Table.from_pylist(diff), part=part)
        manifest = _manifest(context, spec, config, version, pool, outcome, score_origin, failed)
        inputs_changed = _record_inputs(context, con, layout.warehouse_dir, spec, version, pool, ids, score_fill, graph, outcome, manifest["inputs"])
        plots = _plots(spec, pool, outcome, tree, target)
        report = _report(spec, version, pool, outcome, score_origin, plots, diff, inputs_changed)
        files = write_export(
            export_dir,
            [{"rank": r, "sample_id": i, "messages": m} for r, i, m in messages],
            manifest,
            spec.name,
            extra_files={"report.html": report.encode(), **{f"{name}.png": png for name, png in plots.items()}},
        )
        row = [  # the columns of table selections, in order; written last: it commits the version
            spec.name,
            version,
            spec.method,
            config.budget().describe(),
            len(ids),
            len(pool.sample_ids),
            json.dumps(config.model_dump(), sort_keys=True),
            score_origin,
            score_fill,
            float(outcome.objective[-1]) if len(ids) and spec.method in ("mig", "tags") else None,
            str(export_dir),
            context.run.run_id,
            dt.datetime.now(dt.timezone.utc),
        ]
        insert_table(con, "selections", pa.table({f"c{i}": [value] for i, value in enumerate(row)}), part=part)
    context.log.info(
        f"{spec.name} v{version}: {len(ids):,} of {len(pool.sample_ids):,} samples "
        f"(load {loaded - started:.2f}s, select {selected - loaded:.2f}s, persist {time.perf_counter() - selected:.2f}s)"
    )
    changes = Counter(row["change"] for row in diff)
    return dg.MaterializeResult(
        metadata=_metadata(spec, version, pool, outcome, graph, score_origin, failed, files)
        | {
            "plots": dg.MetadataValue.md("\n\n".join(markdown_image(png, name) for name, png in plots.items())),
            "report": dg.MetadataValue.path(files["report.html"]),
            "diff_vs_previous": dg.MetadataValue.md(_diff_md(diff, version)) if version > 1 else "first version",
            "inputs_changed_since_previous": _inputs_changed_md(inputs_changed, version),
            "inputs_snapshot": dg.MetadataValue.path(str(inputs_path(layout.warehouse_dir, spec.name, version))),
            **(_tree_metadata(outcome, tree, target, config) if tree is not None else {}),
            **({"stability": dg.MetadataValue.json(outcome.stability)} if outcome.stability is not None else {}),
            **(
                {"constraints": dg.MetadataValue.json({"spec": spec.constraints.describe(), "selection": constraint_report(constraints, outcome.order)})}
                if constraints is not None
                else {}
            ),
            "added": changes.get("added", 0),
            "removed": changes.get("removed", 0),
            "seconds_select": round(selected - loaded, 3),
            "seconds_total": round(time.perf_counter() - started, 3),
        }
    )


def _diff_against_previous(con, name: str, version: int, ids: list[str], pool: PoolArrays, outcome: SelectionOutcome, reasons: dict[str, str]) -> list[dict]:
    """Samples added and removed since the previous version, each with the reason (``reasons``: the
    exact ones a constraint or the warm start gave, by sample_id)."""
    previous = con.execute("SELECT created_at FROM selections WHERE selection = ? AND version = ?", [name, version - 1]).fetchall()
    if not previous:
        return []
    since = previous[0][0]
    before = [
        sid
        for (sid,) in con.execute("SELECT sample_id FROM selection_members WHERE selection = ? AND version = ? ORDER BY rank", [name, version - 1]).fetchall()
    ]
    new_shards = {shard for (shard,) in con.execute("SELECT shard FROM shards WHERE ingested_at > ?", [since]).fetchall()}
    shard_of = dict(
        con.execute("SELECT sample_id, shard FROM samples WHERE sample_id IN (SELECT unnest($ids))", {"ids": sorted(set(ids) ^ set(before))}).fetchall()
    )
    rank_of = {sid: rank for rank, sid in enumerate(ids, start=1)}
    in_pool = set(pool.sample_ids)
    last_gain = float(outcome.gains[-1]) if len(outcome.gains) else float("nan")
    rows = []
    for sid in ids:
        if sid in set(before):
            continue
        if sid in reasons:
            reason = reasons[sid]
        elif shard_of.get(sid) in new_shards:
            reason = f"new sample: shard {shard_of[sid]} was ingested after version {version - 1}"
        else:
            gain = outcome.gains[rank_of[sid] - 1]
            reason = (
                f"now within the budget at rank {rank_of[sid]} (gain {gain:.4g}): samples added or removed since "
                "changed which labels were already covered when its turn came"
            )
        rows.append({"selection": name, "version": version, "previous_version": version - 1, "sample_id": sid, "change": "added", "reason": reason})
    for sid in before:
        if sid in rank_of:
            continue
        reason = (
            "no longer in the pool (its shard changed or its tagging failed)"
            if sid not in in_pool
            else reasons[sid]
            if sid in reasons
            else f"displaced: its gain fell below the last pick's ({last_gain:.4g}) as new samples covered its labels"
        )
        rows.append({"selection": name, "version": version, "previous_version": version - 1, "sample_id": sid, "change": "removed", "reason": reason})
    return rows


def _inputs_changed_md(inputs_changed: list[dict] | None, version: int) -> dg.MetadataValue | str:
    if version == 1:
        return "first version"
    if inputs_changed is None:
        return f"v{version - 1} has no input snapshot (made before snapshots were kept)"
    if not inputs_changed:
        return f"no input of v{version - 1}'s members changed"
    return dg.MetadataValue.md(markdown_table(inputs_changed, list(inputs_changed[0])))


def _diff_md(diff: list[dict], version: int, limit: int = 20) -> str:
    if not diff:
        return f"identical to version {version - 1}"
    lines = ["| change | sample_id | reason |", "|---|---|---|"]
    lines += [f"| {r['change']} | `{r['sample_id'][:12]}` | {r['reason']} |" for r in diff[:limit]]
    return "\n".join(lines + ([f"\n... {len(diff) - limit} more in table selection_diffs"] if len(diff) > limit else []))


def _plots(spec: SelectionSpec, pool: PoolArrays, outcome: SelectionOutcome, tree=None, target=None) -> dict[str, bytes]:
    selected_tags = Counter(t for i in outcome.order for t in pool.tags[i])
    plots = {
        "tag_distribution": distribution_plot(Counter(t for tags in pool.tags for t in tags), selected_tags),
        "quality": score_plot(pool.scores, pool.scores[outcome.order]),
    }
    if spec.method in ("mig", "tags") and len(outcome.order):
        plots["curves"] = curve_plot(outcome.objective, outcome.gains)
    if tree is not None:
        pool_coverage = np.asarray(outcome.sample_matrix.sum(axis=0)).ravel()
        plots["tree_coverage"] = level_coverage_plot(coverage_by_level(outcome.coverage, tree.levels), coverage_by_level(pool_coverage, tree.levels))
        if target is not None and outcome.kl is not None and len(outcome.order):
            plots["kl_vs_target"] = kl_plot(outcome.kl, target, outcome.leaf_mass, outcome.pool_leaf_mass, tree.names)
    return plots


def _tree_metadata(outcome: SelectionOutcome, tree, target, config: SelectionConfig) -> dict:
    """Coverage per tree level, leaf entropy and, with a target profile, KL(target || selection) and of the pool."""
    metadata = {
        "coverage_by_level": dg.MetadataValue.json({str(level): round(share, 4) for level, share in coverage_by_level(outcome.coverage, tree.levels).items()}),
        "leaves_covered": int((outcome.leaf_mass > 0).sum()),
        "leaf_entropy": round(leaf_entropy(outcome.leaf_mass), 4),
        "tree_nodes": tree.n_nodes,
        "align": config.align,
    }
    if target is not None:
        metadata["kl_target_selection"] = round(kl_divergence(target, outcome.leaf_mass, config.eps), 4)
        metadata["kl_target_pool"] = round(kl_divergence(target, outcome.pool_leaf_mass, config.eps), 4)
    return metadata


def load_target(con, tree_version: str, *, required: bool) -> np.ndarray | None:
    """The target leaf distribution of ``target_profile`` when it was built on this tree version.

    Missing or stale: an error when ``required`` (an aligned selection), else None (KL not reported)."""
    if has_relation(con, "target_info"):
        [(built_on,)] = con.execute("SELECT tree_version FROM target_info").fetchall()
        if built_on == tree_version:
            return np.array([share for (share,) in con.execute("SELECT share FROM target_profile ORDER BY leaf_id").fetchall()])
        problem = f"target_profile was built on tree {built_on}, the tree is now {tree_version}: materialize target_profile again"
    else:
        problem = "no target profile: set target.path in MIG_HOME/mig.yaml (or put the target set in MIG_HOME/targets) and materialize target_profile"
    if required:
        raise ValueError(problem)
    return None


def _record_inputs(context, con, warehouse_dir, spec, version, pool, ids, score_fill, graph, outcome, upstream) -> list[dict] | None:
    """Write the version's input snapshot (and, for MIG, its label graph and final coverage); returns
    what changed in the previous version's members' inputs since, summarized (None: the previous
    version has no snapshot)."""
    previous_path = inputs_path(warehouse_dir, spec.name, version - 1)
    previous = pq.read_table(previous_path) if previous_path.exists() else None
    previous_members = previous.filter(previous.column("rank").is_valid()).column("sample_id").to_pylist() if previous is not None else []
    current = current_inputs(con, raw_for=sorted(set(ids) | set(previous_members)))
    shards = sorted(set(current.column("shard").to_pylist()))
    facts = {
        "selection": spec.name,
        "version": version,
        "method": spec.method,
        "run_id": context.run.run_id,
        "inputs": upstream,
        "shards": {shard: latest_materializations(context.instance, shard) for shard in shards},
        "tag_embedding_model": con.execute("SELECT any_value(model_id) FROM label_graph_info").fetchall()[0][0]
        if has_relation(con, "label_graph_info")
        else None,
    }
    snapshot = version_inputs(current, pool.sample_ids, pool.scores, score_fill, ids)
    write_inputs(inputs_path(warehouse_dir, spec.name, version), snapshot, facts)
    if graph is not None and outcome.coverage is not None:
        write_graph(graph_path(warehouse_dir, spec.name, version), graph.labels, graph.weights, outcome.coverage)
    if previous is None:
        return None
    previous_facts = read_facts(previous_path)
    return changes_summary(member_changes(previous, previous_facts, current, facts), version - 1, upstream_changes(previous_facts, facts))


def _report(spec, version, pool, outcome, score_origin, plots, diff, inputs_changed) -> str:
    selected_tags = Counter(t for i in outcome.order for t in pool.tags[i])
    summary = {
        "selection": spec.name,
        "version": version,
        "method": spec.method,
        "budget": spec.budget,
        "pool size": len(pool.sample_ids),
        "selected": len(outcome.order),
        "selected tokens (est.)": int(pool.tokens[outcome.order].sum()),
        "quality weights": score_origin,
    }
    if outcome.kl is not None and len(outcome.kl):
        summary["KL(target || selection), nats"] = round(float(outcome.kl[-1]), 4)
    top = [{"tag": tag, "selected samples": n} for tag, n in selected_tags.most_common(25)]
    changes = [{"change": r["change"], "sample_id": r["sample_id"], "reason": r["reason"]} for r in diff]
    tables = {"top tags in the selection": top, "changes since the previous version": changes}
    if inputs_changed is not None:
        tables[f"inputs changed since version {version - 1}"] = inputs_changed
    return html_report(f"{spec.name} v{version}", summary, plots, tables)


def _manifest(context, spec, config, version, pool, outcome, score_origin, failed) -> dict:
    instance = context.instance
    upstream = {}
    method_inputs = {"mig": ("tag_embeddings", "label_graph"), "tags": ("tag_embeddings", "knowledge_tree", "target_profile")}
    for key in ("raw_pool", "atomic_tags", *method_inputs.get(spec.method, ())):
        event = instance.get_latest_materialization_event(dg.AssetKey(key))
        if event is not None and event.asset_materialization is not None:
            upstream[key] = {"run_id": event.run_id, "data_version": event.asset_materialization.tags.get("dagster/data_version")}
    return {
        "selection": spec.name,
        "version": version,
        "method": spec.method,
        "config": config.model_dump(),
        "constraints": spec.constraints.describe() if spec.constraints is not None else {},
        "stability": dataclasses.asdict(spec.stability) if spec.stability is not None else None,
        "code_version": SELECTION_CODE_VERSION,
        "run_id": context.run.run_id,
        "inputs": upstream,
        "pool_shards": sorted(instance.get_dynamic_partitions(pool_shards.name)),
        "counts": {
            "pool": len(pool.sample_ids),
            "selected": len(outcome.order),
            "excluded_failed_tagging": failed,
            "selected_tokens_est": int(pool.tokens[outcome.order].sum()),
        },
        "score_origin": score_origin,
        "settings": settings_record(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }


def _metadata(spec, version, pool, outcome, graph, score_origin, failed, files) -> dict:
    selected_scores, order = pool.scores[outcome.order], outcome.order
    metadata = {
        "dagster/row_count": len(order),
        "dagster/column_lineage": dg.TableColumnLineage(
            deps_by_column={
                "sample_id": [dg.TableColumnDep(asset_key=dg.AssetKey("raw_pool"), column_name="sample_id")],
                "messages": [dg.TableColumnDep(asset_key=dg.AssetKey("raw_pool"), column_name="messages")],
                "top_labels": [dg.TableColumnDep(asset_key=dg.AssetKey("atomic_tags"), column_name="tags")],
            }
        ),
        "version": version,
        "pool_size": len(pool.sample_ids),
        "selected_tokens_est": int(pool.tokens[order].sum()),
        "excluded_failed_tagging": failed,
        "score_origin": score_origin,
        "score_distribution": dg.MetadataValue.md(_score_table(pool.scores, selected_scores)),
        "export_dir": dg.MetadataValue.path(str(Path(files["data.jsonl"]).parent)),
    }
    if spec.method in ("mig", "tags") and len(order):
        points = np.unique(np.linspace(0, len(order) - 1, min(CURVE_POINTS, len(order))).astype(int))
        metadata["objective_curve"] = dg.MetadataValue.json(
            [{"rank": int(i) + 1, "objective": round(float(outcome.objective[i]), 4), "gain": round(float(outcome.gains[i]), 4)} for i in points]
        )
        metadata["objective"] = float(outcome.objective[-1])
    if graph is not None and graph.labels:
        covered = int((outcome.coverage > 0).sum()) if outcome.coverage is not None else 0
        metadata["labels_covered"] = covered
        metadata["label_coverage"] = round(covered / len(graph.labels), 4)
    return metadata


def _score_table(pool_scores: np.ndarray, selected: np.ndarray) -> str:
    def row(name, values):
        if not len(values):
            return f"| {name} | 0 | | | | |"
        q10, q50, q90 = np.quantile(values, [0.1, 0.5, 0.9])
        return f"| {name} | {len(values)} | {values.mean():.3f} | {q10:.3f} | {q50:.3f} | {q90:.3f} |"

    return "\n".join(["| set | n | mean | p10 | p50 | p90 |", "|---|---|---|---|---|---|", row("pool", pool_scores), row("selected", selected)])


def selection_specs() -> list[SelectionSpec]:
    """Specs from the file the setting ``selections.path`` names, else the packaged ``selections.yaml``."""
    return load_specs(current_settings().selections_path)
