"""``label_graph``: the MIG label graph over the pool's canonical tags (tables label_graph_*)."""

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from pydantic import Field

from mig_assets.core.embedding.encoder import arrow_to_vectors
from mig_assets.core.mig.problem import MigParams, build_label_graph
from mig_assets.core.mig.reference_jsonl import load_valid_tags
from mig_assets.core.selection.inputs import tag_policies, valid_labels
from mig_assets.core.store.catalog import replace_table
from mig_assets.orchestration.automation import re_select
from mig_assets.orchestration.column_lineage import column_lineage
from mig_assets.orchestration.provenance import record_settings
from mig_assets.resources import Warehouse


class LabelGraphConfig(dg.Config):
    tau: float = Field(default=MigParams.tau, description="keep label pairs with cosine similarity >= tau (self loops always kept)")
    valid_tag_path: str = Field(default="", description="JSON list of allowed tags (e.g. InsTag's valid_tag_path.json); empty: all tags")


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
            "dagster/column_lineage": column_lineage({"label": [("tag_embeddings", "tag")], "weight": [("tag_embeddings", "embedding")]}),
            "edges": n_edges,
            "mean_degree": round(float(degree.mean()), 3) if len(degree) else 0.0,
            "isolated_labels": int((degree == 0).sum()),
            "threshold": config.tau,
            "embedding_model": model_id,
            "valid_tag_path": config.valid_tag_path or "(all tags)",
        }
    )
