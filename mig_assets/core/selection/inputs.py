"""What a selection reads from the warehouse: the pool's arrays, the label graph, the knowledge tree
and the target profile, loaded from the catalog session of
:func:`~mig_assets.core.store.catalog.open_catalog` into one :class:`SelectionInputs`.

Pool rows come in input order (shards in registration order, then lines), the MIG reference's
order: every method breaks ties to the earlier row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from mig_assets.core.curation.exclusions import Exclusions, find_exclusions
from mig_assets.core.embedding.encoder import arrow_to_vectors
from mig_assets.core.selection.lineage import LineageRows, compact_lineage, inputs_sql
from mig_assets.core.selection.request import EMBEDDING_METHODS, SelectionRequest
from mig_assets.core.store.catalog import fetch_apart, has_relation
from mig_assets.core.store.layout import WarehouseLayout
from mig_assets.core.tagging.canonical import normalize_tag, policy_of_backend
from mig_assets.core.tags.tree import load_tree


@dataclass
class PoolArrays:
    sample_ids: list[str]
    tag_array: pa.ListArray  # canonical tags per sample (list<string>; given as lists, converted): Arrow, no Python object per tag
    scores: np.ndarray  # quality weight per sample (float64, >= 0)
    tokens: np.ndarray  # estimated tokens per sample (int64)
    embeddings: np.ndarray | None = None  # (N, D) sample embeddings, for the embedding baselines
    lineage_rows: np.ndarray | None = None  # each sample's row in the lineage rows loaded with it (SelectionInputs.lineage)

    def __post_init__(self):
        if not isinstance(self.tag_array, pa.Array):
            self.tag_array = pa.array(self.tag_array, pa.list_(pa.string()))

    @cached_property
    def tags(self) -> list[list[str]]:
        """The tags as Python lists, for the methods that walk them sample by sample."""
        return self.tag_array.to_pylist()

    def without(self, excluded: set[str]) -> PoolArrays:
        """The pool without the ``excluded`` sample ids, input order kept."""
        if not excluded:
            return self
        keep = np.array([sid not in excluded for sid in self.sample_ids], dtype=bool)
        return PoolArrays(
            sample_ids=[sid for sid, k in zip(self.sample_ids, keep) if k],
            tag_array=self.tag_array.filter(pa.array(keep)),
            scores=self.scores[keep],
            tokens=self.tokens[keep],
            embeddings=self.embeddings[keep] if self.embeddings is not None else None,
            lineage_rows=self.lineage_rows[keep] if self.lineage_rows is not None else None,
        )


@dataclass
class LabelGraph:
    labels: list[str]  # sorted; column j <-> labels[j]
    weights: sp.csr_array  # W (L x L), thresholded cosine similarity with self loops


@dataclass
class SelectionInputs:
    """The pool (with the origin of its weights, the weight of unscored samples and the count of
    samples left out for failed tagging) and whichever of graph, tree and target were loaded."""

    pool: PoolArrays
    score_origin: str
    score_fill: float
    failed: int
    graph: LabelGraph | None = None
    tree: object | None = None  # core.tags.tree.KnowledgeTree
    target: np.ndarray | None = None  # target leaf distribution over the tree's leaves
    exclusions: Exclusions = field(default_factory=Exclusions)  # left out of the pool before selection, with the evidence
    lineage: LineageRows | None = None  # every sample's inputs as loaded; None: read them when persisting


def load_inputs(
    con,
    layout: WarehouseLayout,
    shard_order: Sequence[str],
    *,
    embeddings: bool,
    graph: bool,
    tree: bool,
    target_required: bool,
    exclude_contaminated: bool = True,
    exclude_near_duplicates: bool = True,
) -> SelectionInputs:
    """The pool (with its sample embeddings when ``embeddings``) without the samples curation leaves
    out (contaminated ones, near-duplicates that are not their cluster's representative: each switch
    on by default), the label graph when ``graph``, the knowledge tree and its target profile when
    ``tree`` (a missing or stale target is an error when ``target_required``, else left out)."""
    pool, score_origin, score_fill, failed, lineage = load_pool(con, layout if embeddings else None, shard_order)
    exclusions = find_exclusions(con, layout, pool.sample_ids, list(shard_order), contamination=exclude_contaminated, near_duplicates=exclude_near_duplicates)
    inputs = SelectionInputs(
        pool.without(exclusions.excluded_ids),
        score_origin,
        score_fill,
        failed,
        graph=load_graph(con) if graph else None,
        exclusions=exclusions,
        lineage=LineageRows(lineage),
    )
    if tree:
        inputs.tree, tree_info = load_tree(layout.knowledge_tree_dir)
        inputs.target = load_target(con, tree_info["version"], required=target_required)
    return inputs


def load_request_inputs(con, layout: WarehouseLayout, shard_order: Sequence[str], request: SelectionRequest) -> SelectionInputs:
    """What ``request``'s method reads: embeddings for deita and kcenter, the graph for MIG, the tree
    and target for TAGS (the target required when it aligns)."""
    return load_inputs(
        con,
        layout,
        shard_order,
        embeddings=request.method in EMBEDDING_METHODS,
        graph=request.method == "mig",
        tree=request.method == "tags",
        target_required=request.tags.align != "none",
        exclude_contaminated=request.exclude_contaminated,
        exclude_near_duplicates=request.exclude_near_duplicates,
    )


def quality_scores(
    imported: pa.Array | pa.ChunkedArray, scored: pa.Array | pa.ChunkedArray | None = None, scorers: Sequence[str] = ()
) -> tuple[np.ndarray, str, float]:
    """Sample weights: the ``quality_scores`` asset's score where it has one, else the imported Deita
    score, else the median of those present; 1.0 everywhere when no sample has either. Returns the
    weights, a description of their origin and the weight given to samples without a score."""
    imported = pa.chunked_array([imported]) if isinstance(imported, pa.Array) else imported
    scored = pa.nulls(len(imported), pa.float64()) if scored is None else scored
    values = pc.coalesce(scored, imported).to_numpy(zero_copy_only=False).astype(np.float64)  # NaN: neither
    present = ~np.isnan(values)
    n_present, n_scored = int(present.sum()), len(scored) - scored.null_count
    if not n_present:
        return np.ones(len(values)), "uniform (no sample carries a quality score)", 1.0
    fill = float(np.median(values[present]))
    scores = np.where(present, values, fill)
    parts = []
    if n_scored:
        parts.append(f"{n_scored} scored by quality_scores ({', '.join(scorers)})")
    if n_present > n_scored:
        parts.append(f"{n_present - n_scored} imported Deita scores")
    if len(values) > n_present:
        parts.append(f"{len(values) - n_present} without a score get the median {fill:.4g}")
    return scores, "quality x complexity (mean over turns): " + "; ".join(parts), fill


def load_pool(con, layout: WarehouseLayout | None = None, shard_order: Sequence[str] = ()) -> tuple[PoolArrays, str, float, int, pa.Table]:
    """Kept samples in input order (shards in ``shard_order``, the partitions' registration order, then
    any other shard by key; lines in file order) with their tags and weights (and embeddings, given
    ``layout``); samples whose tagging failed are left out. Input order is the MIG reference's: its
    greedy breaks ties to the first sample of the file. Returns the arrays, the origin of the weights,
    the weight given to samples without one, the number left out, and every sample's inputs as the
    lineage records them (:data:`~mig_assets.core.selection.lineage.INPUTS_SCHEMA`, no raw record)."""
    # one query, no ORDER BY (DuckDB would sort every wide row: its peak memory and a second), in a
    # session of its own, closed once fetched; the pool's columns are put in input order in Arrow
    # below, the lineage rows need no order and get their shard's facts from a query over the shards
    table = fetch_apart(con, inputs_sql(con, ", s.imported_quality, s.n_tokens_est, s.q_score AS score", shard_facts=False))
    shard_rank = pc.fill_null(pc.index_in(table.column("shard"), value_set=pa.array(list(shard_order), pa.string())), len(shard_order))
    in_order = pc.sort_indices(
        pa.table({"shard_rank": shard_rank, "shard": table.column("shard"), "line_no": table.column("line_no")}),
        [("shard_rank", "ascending"), ("shard", "ascending"), ("line_no", "ascending")],
    )
    is_failed = pc.fill_null(pc.equal(table.column("tag_status"), "failed"), False)
    failed = pc.sum(is_failed).as_py() or 0
    scorers = sorted(s for s in pc.unique(table.column("scorer").filter(pc.invert(is_failed))).to_pylist() if s)
    # only the columns the pool keeps, in input order
    kept_rows = in_order.filter(pc.invert(pc.take(is_failed, in_order)))
    pool_rows = table.select(["sample_id", "tags", "imported_quality", "score", "n_tokens_est"]).take(kept_rows)
    scores, origin, fill = quality_scores(pool_rows.column("imported_quality"), pool_rows.column("score"), scorers)
    tags = pool_rows.column("tags").combine_chunks()
    pool = PoolArrays(
        sample_ids=pool_rows.column("sample_id").to_pylist(),
        tag_array=pc.if_else(pc.is_valid(tags), tags, pa.scalar([], tags.type)) if tags.null_count else tags,  # not tagged yet: no tags
        scores=scores,
        tokens=pool_rows.column("n_tokens_est").to_numpy().astype(np.int64),
        lineage_rows=kept_rows.to_numpy().astype(np.int64),
    )
    del pool_rows
    lineage = compact_lineage(con, table)
    del table
    pa.default_memory_pool().release_unused()  # the copies made on the way (about 190 MB at 939,000 samples) go back to the system
    if layout is not None:
        pool.embeddings = load_embeddings(layout, pool.sample_ids)
    return pool, origin, fill, failed, lineage


def load_embeddings(layout: WarehouseLayout, sample_ids: list[str]) -> np.ndarray:
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
    """The ``label_graph`` asset's labels and weighted edges as W (L x L)."""
    labels = [label for (label,) in con.execute("SELECT label FROM label_graph_labels ORDER BY label_id").fetchall()]
    src, dst, weight = con.execute("SELECT list(src), list(dst), list(weight) FROM label_graph_edges").fetchall()[0]
    W = sp.csr_array(
        (np.asarray(weight or [], np.float32), (np.asarray(src or [], np.int64), np.asarray(dst or [], np.int64))),
        shape=(len(labels), len(labels)),
    )
    return LabelGraph(labels, W)


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
