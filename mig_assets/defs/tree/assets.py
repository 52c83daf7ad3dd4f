"""``knowledge_tree``: canonical tags organised bottom-up into a concept hierarchy (TAGS, spec §1.5), and
``target_profile``: a target set grounded on its leaves (spec §1.9)."""

import hashlib
import json
from collections import Counter

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from mig_assets.core.embedding.encoder import EmbeddingCache, arrow_to_vectors, text_hash, vectors_to_arrow
from mig_assets.core.ingest.columns import MESSAGE_TYPE
from mig_assets.core.outputs.report import markdown_image, target_plot
from mig_assets.core.store.catalog import WarehouseLayout, drop_table, replace_table
from mig_assets.core.store.parquet import write_parquet_atomic
from mig_assets.core.tagging.canonical import as_written_tags
from mig_assets.core.tagging.rows import llm_result_tags
from mig_assets.core.tags.build import build_tree
from mig_assets.core.tags.clustering import CLUSTERING_METHOD
from mig_assets.core.tags.information import leaf_entropy
from mig_assets.core.tags.problem import target_distribution
from mig_assets.core.tags.refine import LLMTreeRefiner
from mig_assets.core.tags.target import (
    DEFAULT_TAG_THRESHOLD,
    DEFAULT_TEXT_THRESHOLD,
    TargetSample,
    ground_target,
    read_target,
)
from mig_assets.core.tags.tree import load_tree
from mig_assets.orchestration.automation import re_select
from mig_assets.orchestration.column_lineage import column_lineage
from mig_assets.orchestration.provenance import record_settings
from mig_assets.orchestration.tagging import tag_on_ray, tag_through_cache
from mig_assets.resources import Embedder, Execution, Tagger, Warehouse
from mig_assets.settings import current_settings

TOP_NODES_SHOWN = 20


class KnowledgeTreeConfig(dg.Config):
    branching: float = Field(default=10, description="children per parent above the leaves")
    top_size: int = Field(default=20, description="nodes of the top level, under the virtual root")
    leaf_branching: float | None = Field(default=None, description="tags per leaf (default: branching)")
    min_count: float = Field(default=2, description="rarer tags never seed a leaf; they join the nearest one")
    seed: int = 0
    refine: bool = Field(
        default=False,
        description="LLM refinement through the tagger's model: name, merge synonyms, reassign within a shortlist, rename",
    )
    shortlist: int = Field(default=5, description="candidate parents per child when the LLM reassigns")


@dg.asset(
    deps=["tag_embeddings"],
    group_name="tree",
    kinds={"duckdb", "parquet"},
    code_version="2",  # 2: scikit-learn's K-Means
    pool="duckdb",
    automation_condition=re_select,
    description="TAGS knowledge tree: bottom-up K-Means over tag embeddings, leaves = first-level concepts, every "
    "canonical tag mapped to a leaf, parents named from their most central children (tables tree_nodes, tree_tags).",
)
def knowledge_tree(context: dg.AssetExecutionContext, config: KnowledgeTreeConfig, warehouse: Warehouse, tagger: Tagger) -> dg.MaterializeResult:
    record_settings(context)
    layout = warehouse.layout
    table = pq.read_table(layout.tag_embeddings_file)
    tags = table.column("tag").to_pylist()
    if not tags:
        raise ValueError("no tags to build a tree from: materialize atomic_tags and tag_embeddings first")
    vectors = arrow_to_vectors(table.column("embedding"))
    with warehouse.connect() as con:
        counts = dict(con.execute("SELECT tag, n_samples FROM tag_vocabulary").fetchall())
    folder = layout.warehouse_dir / "knowledge_tree"
    refiner = None
    if config.refine:
        if tagger.backend == "imported":
            raise ValueError("refine=True asks the tagger's LLM; the tagger backend is 'imported' (set MIG_TAGGER_BACKEND=vllm or openai)")
        refiner = LLMTreeRefiner(tagger.llm(), cache_path=folder / "refine_cache" / f"{tagger.model_id}.jsonl")
    tree = build_tree(
        tags,
        vectors,
        np.array([counts.get(t, 1) for t in tags], dtype=np.float64),
        branching=config.branching,
        top_size=config.top_size,
        leaf_branching=config.leaf_branching,
        min_count=config.min_count,
        seed=config.seed,
        refine=refiner,
        shortlist=config.shortlist,
    )
    model_id = table.column("model_id")[0].as_py()
    refined_by = f"{tagger.model_id} ({tagger.version()})" if refiner else ""
    version = hashlib.sha256(
        json.dumps([model_id, tags, config.model_dump(), refined_by, CLUSTERING_METHOD], sort_keys=True).encode() + np.ascontiguousarray(vectors).tobytes()
    ).hexdigest()[:16]
    write_parquet_atomic(pa.table({"node_id": tree.node_ids, "centroid": vectors_to_arrow(tree.centroids)}), folder / "centroids.parquet")
    (folder / "tree.json").write_text(json.dumps(tree.to_dict() | {"version": version, "embedding_model": model_id, "refined_by": refined_by}, sort_keys=True))
    with warehouse.connect() as con:
        for name, columns in (("tree_nodes", tree.nodes_table()), ("tree_tags", tree.tags_table())):
            replace_table(con, name, pa.table(columns))
    per_level = {int(level): int(n) for level, n in zip(*np.unique(tree.levels, return_counts=True))}
    top = [v for v in range(tree.n_nodes) if tree.parents[v] == tree.root]
    top.sort(key=lambda v: -tree.counts[v])
    top_md = "\n".join(
        ["| top-level node | tags | samples |", "|---|---|---|"]
        + [f"| {tree.names[v]} | {int(tree.sizes[v])} | {tree.counts[v]:.0f} |" for v in top[:TOP_NODES_SHOWN]]
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": tree.n_nodes,
            "dagster/column_lineage": dg.TableColumnLineage(
                deps_by_column={
                    "tag": [dg.TableColumnDep(asset_key=dg.AssetKey("tag_embeddings"), column_name="tag")],
                    "leaf": [dg.TableColumnDep(asset_key=dg.AssetKey("tag_embeddings"), column_name="embedding")],
                }
            ),
            "leaves": tree.n_leaves,
            "depth": tree.depth,
            "nodes_per_level": dg.MetadataValue.json(per_level),
            "tags": len(tags),
            "tree_version": version,
            "embedding_model": model_id,
            "refined_by": refined_by or "none (parents named from their most central children)",
            **({"llm_prompts_asked": refiner.asked, "llm_fallbacks": refiner.fallbacks} if refiner else {}),
            "top_level": dg.MetadataValue.md(top_md),
            "path": dg.MetadataValue.path(str(folder / "tree.json")),
        },
        data_version=dg.DataVersion(version),
    )


TARGET_SETTINGS = current_settings().target  # settings `target.path` and `target.filter` (field=value,value)
TARGET_FILTER_FIELD, TARGET_FILTER_VALUES = TARGET_SETTINGS.parsed_filter()


class TargetProfileConfig(dg.Config):
    path: str = Field(
        default=TARGET_SETTINGS.path,
        description="target set: a file or folder in any format the ingestion reads (empty: MIG_HOME/targets)",
    )
    filter_field: str = Field(default=TARGET_FILTER_FIELD, description="keep records whose field ... (e.g. category)")
    filter_values: list[str] = Field(default=TARGET_FILTER_VALUES, description="... is one of these values (e.g. coding, math)")
    alpha: float = Field(default=0.5, description="additive smoothing: t = (c + alpha) / (sum c + alpha L)")
    grounding: str = Field(default="auto", description="auto (tags, text for untagged samples) | tags | text")
    tag_threshold: float = Field(default=DEFAULT_TAG_THRESHOLD, description="cosine for an unseen tag to join a leaf")
    text_threshold: float = Field(default=DEFAULT_TEXT_THRESHOLD, description="cosine for an untagged sample's text to join a leaf")


TARGET_TABLES = ("target_profile", "target_samples", "target_info")
TARGET_MESSAGES_FILE = "target_profile/messages.parquet"  # under the warehouse: the target set as the Ray workers read it


def tag_target(
    context: dg.AssetExecutionContext, layout: WarehouseLayout, tagger: Tagger, execution: Execution, samples: list[TargetSample]
) -> tuple[list[list[str] | None], dict]:
    """The target samples' tags (None for a failed sample) through the pool's tagging path: the tagger's
    cache and model, on Ray when ``execution`` says so (the target set is written as one file of
    ``sample_id``, ``messages`` for the workers); returns them with the tagging figures."""

    def log(message: str) -> None:
        context.log.info(f"target: {message}")

    ray_figures, cluster_metadata = None, {}
    if execution.on_ray:
        messages = pa.table({"sample_id": [s.sample_id for s in samples], "messages": pa.array([s.messages for s in samples], pa.list_(MESSAGE_TYPE))})
        write_parquet_atomic(messages, layout.warehouse_dir / TARGET_MESSAGES_FILE)
        planned = {"target": (TARGET_MESSAGES_FILE, [(s.sample_id, text_hash(s.text)) for s in samples])}
        figures, cluster_metadata = tag_on_ray(planned, tagger, execution, layout, include_response=False, log=log)  # s.text: the user turns
        ray_figures = figures["target"]
    results, stats, load_seconds = tag_through_cache([(s.sample_id, s.text) for s in samples], tagger, layout, ray_figures=ray_figures, log=log)
    tags = [llm_result_tags(results[s.sample_id], s.text).tags if results[s.sample_id]["status"] != "failed" else None for s in samples]
    figures = {"newly_tagged": stats.tagged, "from_cache": stats.cached, "engine_load_seconds": round(load_seconds, 3), **cluster_metadata}
    return tags, figures


@dg.asset(
    deps=[knowledge_tree],
    group_name="tree",
    kinds={"duckdb"},
    code_version="1",
    pool="gpu",
    automation_condition=re_select,
    description="The target domain as a distribution over the tree's leaves: a target set (e.g. MT-Bench coding + math) "
    "tagged with the pool's tagger, grounded on the tree and smoothed (tables target_profile, target_samples, target_info).",
)
def target_profile(
    context: dg.AssetExecutionContext, config: TargetProfileConfig, warehouse: Warehouse, tagger: Tagger, embedder: Embedder, execution: Execution
) -> dg.MaterializeResult:
    record_settings(context)
    if config.grounding not in ("auto", "tags", "text"):
        raise ValueError(f"grounding must be auto, tags or text, got {config.grounding!r}")
    layout = warehouse.layout
    tree, tree_info = load_tree(layout.knowledge_tree_dir)
    source = config.path or str(layout.home / "targets")
    if not config.path and not any((layout.home / "targets").glob("*")):
        # no target set: an empty profile, so unaligned selections run (without KL) and aligned ones say why not
        with warehouse.connect() as con:
            for name in TARGET_TABLES:
                drop_table(con, name)
        context.log.warning(f"no target set: {source} is empty and the setting target.path is not set; aligned selections will fail")
        return dg.MaterializeResult(metadata={"dagster/row_count": 0, "source": f"none ({source} is empty)"}, data_version=dg.DataVersion("none"))
    read = read_target(source, config.filter_field, config.filter_values)
    for problem in read.bad[:20]:
        context.log.warning(f"target record skipped: {problem}")
    if not read.samples:
        raise ValueError(
            f"the target set {source} has no usable sample ({read.rows_read} read, {read.filtered_out} filtered out by "
            f"{config.filter_field}={config.filter_values}, {len(read.bad)} bad)"
        )
    samples = read.samples
    tags: list[list[str] | None] = [None] * len(samples)
    tag_source = "none"
    tagging_figures: dict = {}
    if config.grounding != "text":
        if tagger.backend != "imported":
            tags, tagging_figures = tag_target(context, layout, tagger, execution, samples)
            tag_source = f"{tagger.backend}:{tagger.model_id} ({tagger.prompt_version})"
        else:
            tags = [as_written_tags(s.imported_tags) if s.imported_tags else None for s in samples]  # the pool's policy for imported tags
            tag_source = "imported annotations"
    if config.grounding == "tags" and not any(tags):
        raise ValueError(f"grounding='tags' but no target sample has tags (tag source: {tag_source})")

    same_model = embedder.model == tree_info["embedding_model"] or embedder.get().model_id == tree_info["embedding_model"]
    cache = EmbeddingCache(layout.warehouse_dir / "embedding_cache", tree_info["embedding_model"])

    def embed(texts: list[str]) -> np.ndarray:
        return cache.lookup(texts, embedder.get().encode)[0]

    if not same_model:
        context.log.warning(
            f"the tree was built on {tree_info['embedding_model']!r} and the embedder is {embedder.model!r}: "
            "target tags unseen by the tree stay unassigned and no text grounding is done"
        )
    # texts for the samples none of whose tags reach a leaf (or all of them, grounding by text)
    text_vectors = embed([s.text for s in samples]) if same_model and config.grounding != "tags" else None
    grounding = ground_target(
        tree,
        tags,
        embed_tags=embed if same_model else None,
        text_vectors=text_vectors,
        tag_threshold=config.tag_threshold,
        text_threshold=config.text_threshold,
    )
    share = target_distribution(grounding.leaf_counts, config.alpha)
    leaves = np.arange(tree.n_leaves)
    profile = pa.table(
        {
            "leaf_id": pa.array(leaves, pa.int64()),
            "leaf": [tree.names[v] for v in leaves],
            "count": pa.array(grounding.leaf_counts, pa.float64()),
            "share": pa.array(share, pa.float64()),
        }
    )
    target_samples = pa.table(
        {
            "sample_id": [s.sample_id for s in samples],
            "source_file": [s.source_file for s in samples],
            "line_no": pa.array([s.line_no for s in samples], pa.int64()),
            "text": [s.text for s in samples],
            "tags": pa.array([t or [] for t in tags], pa.list_(pa.string())),
            "grounding": grounding.methods,
            "leaf_ids": pa.array(grounding.sample_leaves, pa.list_(pa.int64())),
        }
    )
    version = hashlib.sha256(tree_info["version"].encode() + share.tobytes()).hexdigest()[:16]
    info = pa.table(
        {
            "profile_version": [version],
            "tree_version": [tree_info["version"]],
            "source": [source],
            "filter": [f"{config.filter_field}={','.join(config.filter_values)}" if config.filter_field else ""],
            "alpha": [config.alpha],
            "tag_source": [tag_source],
            "samples": [len(samples)],
            "run_id": [context.run.run_id],
        }
    )
    with warehouse.connect() as con:
        for name, arrow in zip(TARGET_TABLES, (profile, target_samples, info)):
            replace_table(con, name, arrow)
    methods = Counter(grounding.methods)
    top = np.argsort(-grounding.leaf_counts, kind="stable")[:15]
    top_md = "\n".join(
        ["| leaf | target samples | share |", "|---|---|---|"]
        + [f"| {tree.names[v]} | {grounding.leaf_counts[v]:.2f} | {share[v]:.4f} |" for v in top if grounding.leaf_counts[v] > 0]
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(samples),
            "dagster/column_lineage": column_lineage({"leaf": [("knowledge_tree", "name")], "share": [("knowledge_tree", "leaf")]}),
            "source": source,
            "rows_read": read.rows_read,
            "filtered_out": read.filtered_out,
            "duplicates": read.duplicates,
            "bad_records": len(read.bad),
            "bad_examples": dg.MetadataValue.json(read.bad[:10]),
            "tag_source": tag_source,
            **tagging_figures,
            "samples_grounded": dg.MetadataValue.json(dict(methods)),
            "unassigned_samples": methods.get("unassigned", 0),
            "tags_grounded": dg.MetadataValue.json(grounding.tag_counts),
            "leaves_reached": int((grounding.leaf_counts > 0).sum()),
            "leaves": tree.n_leaves,
            "target_entropy": round(leaf_entropy(share), 4),
            "tree_version": tree_info["version"],
            "profile_version": version,
            "top_leaves": dg.MetadataValue.md(top_md),
            "plot": dg.MetadataValue.md(markdown_image(target_plot(share, [tree.names[v] for v in leaves]), "target profile")),
        },
        data_version=dg.DataVersion(version),
    )
