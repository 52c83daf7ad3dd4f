"""``knowledge_tree``: canonical tags organised bottom-up into a concept hierarchy (TAGS, spec §1.5)."""

import hashlib
import json

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from mig_assets.automation import re_select
from mig_assets.core.embedding import arrow_to_vectors, vectors_to_arrow
from mig_assets.core.io import write_parquet_atomic
from mig_assets.core.tree import build_tree
from mig_assets.embeddings.assets import tag_embeddings, tag_embeddings_path
from mig_assets.resources import Warehouse

TOP_NODES_SHOWN = 20


class KnowledgeTreeConfig(dg.Config):
    branching: float = Field(default=10, description="children per parent above the leaves")
    top_size: int = Field(default=20, description="nodes of the top level, under the virtual root")
    leaf_branching: float | None = Field(default=None, description="tags per leaf (default: branching)")
    min_count: float = Field(default=2, description="rarer tags never seed a leaf; they join the nearest one")
    seed: int = 0


@dg.asset(
    deps=[tag_embeddings],
    group_name="tree",
    kinds={"duckdb", "parquet"},
    code_version="1",
    pool="duckdb",
    automation_condition=re_select,
    description="TAGS knowledge tree: bottom-up K-Means over tag embeddings, leaves = first-level concepts, every "
    "canonical tag mapped to a leaf, parents named from their most central children (tables tree_nodes, tree_tags).",
)
def knowledge_tree(context: dg.AssetExecutionContext, config: KnowledgeTreeConfig, warehouse: Warehouse) -> dg.MaterializeResult:
    layout = warehouse.layout
    table = pq.read_table(tag_embeddings_path(layout.warehouse_dir))
    tags = table.column("tag").to_pylist()
    if not tags:
        raise ValueError("no tags to build a tree from: materialize atomic_tags and tag_embeddings first")
    vectors = arrow_to_vectors(table.column("embedding"))
    with warehouse.connect() as con:
        counts = dict(con.execute("SELECT tag, n_samples FROM tag_vocabulary").fetchall())
    tree = build_tree(
        tags, vectors, np.array([counts.get(t, 1) for t in tags], dtype=np.float64), branching=config.branching,
        top_size=config.top_size, leaf_branching=config.leaf_branching, min_count=config.min_count, seed=config.seed,
    )
    model_id = table.column("model_id")[0].as_py()
    version = hashlib.sha256(
        json.dumps([model_id, tags, config.model_dump()], sort_keys=True).encode() + np.ascontiguousarray(vectors).tobytes()
    ).hexdigest()[:16]
    folder = layout.warehouse_dir / "knowledge_tree"
    write_parquet_atomic(pa.table({"node_id": tree.node_ids, "centroid": vectors_to_arrow(tree.centroids)}), folder / "centroids.parquet")
    (folder / "tree.json").write_text(json.dumps(tree.to_dict() | {"version": version, "embedding_model": model_id}, sort_keys=True))
    with warehouse.connect() as con:
        for name, columns in (("tree_nodes", tree.nodes_table()), ("tree_tags", tree.tags_table())):
            con.register("arrow_input", pa.table(columns))
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM arrow_input")
            con.unregister("arrow_input")
    per_level = {int(level): int(n) for level, n in zip(*np.unique(tree.levels, return_counts=True))}
    top = [v for v in range(tree.n_nodes) if tree.parents[v] == tree.root]
    top.sort(key=lambda v: -tree.counts[v])
    top_md = "\n".join(["| top-level node | tags | samples |", "|---|---|---|"] + [
        f"| {tree.names[v]} | {int(tree.sizes[v])} | {tree.counts[v]:.0f} |" for v in top[:TOP_NODES_SHOWN]
    ])
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": tree.n_nodes,
            "leaves": tree.n_leaves,
            "depth": tree.depth,
            "nodes_per_level": dg.MetadataValue.json(per_level),
            "tags": len(tags),
            "tree_version": version,
            "embedding_model": model_id,
            "top_level": dg.MetadataValue.md(top_md),
            "path": dg.MetadataValue.path(str(folder / "tree.json")),
        },
        data_version=dg.DataVersion(version),
    )
