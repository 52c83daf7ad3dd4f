"""Why is this sample (not) in the subset? Lineage of one sample, answered from the DuckDB catalog.

From the selection back to the shard: source file and line, ingestion run, tags with model,
prompt version and parse status, quality score and its origin, embedding model, then the
selection version's rank, gain at pick time and contributing labels, or, for a sample that was not
picked, its gain at the end of the selection against the last pick's (MIG: the gradient gain over
the label graph; TAGS: the exact tree-level gain, given the knowledge tree).
"""

from __future__ import annotations

import json

import numpy as np
import scipy.sparse as sp

from mig_assets.core.mig import MigParams, phi, phi_prime, propagate, propagation_matrix, sample_label_matrix
from mig_assets.core.selection import PoolArrays, tags_problem
from mig_assets.core.warehouse import has_relation


def _one(con, sql: str, params: list) -> dict | None:
    cursor = con.execute(sql, params)
    names = [d[0] for d in cursor.description]
    row = cursor.fetchall()
    return dict(zip(names, row[0])) if row else None


def resolve_sample_id(con, prefix: str) -> str:
    """Full sample_id from an unambiguous prefix (at least 8 hex characters)."""
    if len(prefix) < 8:
        raise ValueError("give at least 8 characters of the sample_id")
    rows = con.execute("SELECT DISTINCT sample_id FROM raw_pool_rows WHERE starts_with(sample_id, ?) LIMIT 2", [prefix]).fetchall()
    if not rows:
        raise ValueError(f"no sample_id starts with {prefix!r}")
    if len(rows) > 1:
        raise ValueError(f"{prefix!r} matches several samples; give more characters")
    return rows[0][0]


def explain(con, sample_id: str, selection: str | None = None, version: int | None = None, tree=None) -> dict:
    """The lineage of ``sample_id`` and its fate in ``selection`` (latest version by default).

    ``tree`` (the current ``KnowledgeTree``) lets a TAGS selection recompute a rejected sample's gain."""
    sample_id = resolve_sample_id(con, sample_id)
    source = _one(
        con,
        """SELECT s.sample_id, s.shard, s.source_file, s.line_no, s.source_format, s.original_id, s.source,
                  s.ingest_run_id, s.imported_quality, s.n_tokens_est, st.file_sha256, st.ingested_at
           FROM samples s LEFT JOIN shards st USING (shard) WHERE s.sample_id = ?""",
        [sample_id],
    )
    copies = con.execute(
        "SELECT shard || ':' || line_no FROM duplicates WHERE sample_id = ? ORDER BY shard, line_no", [sample_id]
    ).fetchall()
    answer: dict = {
        "sample_id": sample_id,
        "source": {k: source[k] for k in ("shard", "source_file", "line_no", "source_format", "original_id", "source", "ingest_run_id", "file_sha256")},
        "ingested_at": str(source["ingested_at"]),
        "duplicate_copies": [c for (c,) in copies],
        "quality": {"imported_deita_score": source["imported_quality"]},
    }
    scored = None
    if has_relation(con, "quality_scores"):
        scored = _one(
            con, "SELECT score, status, reason, backend, model, prompt_version FROM quality_scores WHERE sample_id = ? ORDER BY status = 'ok' DESC LIMIT 1",
            [sample_id],
        )
        answer["quality"]["quality_scores"] = scored
    # what the selections weigh it by: the scored quality first, then the imported one
    source["weight"] = scored["score"] if scored and scored["status"] == "ok" else source["imported_quality"]
    tags = _one(
        con, "SELECT tags, surface_tags, status, reason, backend, model, prompt_version, truncated, attempts FROM atomic_tags WHERE sample_id = ?", [sample_id]
    ) if has_relation(con, "atomic_tags") else None
    answer["tags"] = tags
    if has_relation(con, "sample_embeddings"):
        embedding = _one(con, "SELECT model_id FROM sample_embeddings WHERE sample_id = ?", [sample_id])
        answer["embedding_model"] = embedding["model_id"] if embedding else None
    if has_relation(con, "selections"):
        answer["selection"] = _selection_fate(con, sample_id, source, tags, selection, version, tree)
    return answer


def _selection_fate(
    con, sample_id: str, source: dict, tags: dict | None, selection: str | None, version: int | None, tree=None
) -> dict | None:
    where, params = ("selection = ?", [selection]) if selection else ("TRUE", [])
    if version is not None:
        where, params = where + " AND version = ?", params + [version]
    chosen = _one(con, f"SELECT * FROM selections WHERE {where} ORDER BY created_at DESC LIMIT 1", params)
    if chosen is None:
        return None
    fate = {k: chosen[k] for k in ("selection", "version", "method", "budget", "n_selected", "n_pool", "run_id", "export_dir")}
    fate["config"] = json.loads(chosen["config"])
    fate["created_at"] = str(chosen["created_at"])
    fate["score_origin"] = chosen["score_origin"]
    member = _one(
        con, "SELECT rank, gain, objective, top_labels FROM selection_members WHERE selection = ? AND version = ? AND sample_id = ?",
        [chosen["selection"], chosen["version"], sample_id],
    )
    if member is not None:
        return fate | {"selected": True} | member
    fate["selected"] = False
    if source["ingested_at"] is not None and source["ingested_at"] > chosen["created_at"]:
        fate["why_not"] = "the sample was ingested after this selection version was made"
    elif tags is not None and tags["status"] == "failed":
        fate["why_not"] = f"excluded: its tagging failed ({tags['reason']})"
    elif chosen["method"] == "tags" and tree is None:
        fate["why_not"] = "TAGS' greedy never ranked its tree-level information gain within the budget (no tree to recompute it)"
    elif chosen["method"] not in ("mig", "tags"):
        fate["why_not"] = f"the {chosen['method']} sampler (seed {fate['config'].get('seed')}) did not draw it"
    else:
        last = con.execute(
            "SELECT gain FROM selection_members WHERE selection = ? AND version = ? ORDER BY rank DESC LIMIT 1",
            [chosen["selection"], chosen["version"]],
        ).fetchall()
        mig = chosen["method"] == "mig"
        gain = _final_gain(con, chosen, source, tags) if mig else _final_tree_gain(con, chosen, source, tags, tree)
        fate["gain_at_end"] = gain
        fate["last_pick_gain"] = last[0][0] if last else None
        covered = "the labels it carries were already covered" if mig else "the tree nodes its tags reach were already covered"
        aligned = "" if mig or fate["config"].get("align", "none") == "none" else (
            f" (tree-level information only; the last pick's gain also has the {fate['config']['align']} alignment term)"
        )
        fate["why_not"] = (
            f"its gain once the selection was complete ({gain:.6g}) is below the last pick's gain "
            f"({fate['last_pick_gain']:.6g}): {covered}{aligned}"
            if last else "the budget allowed no pick"
        )
    return fate


def _final_coverage(con, chosen: dict, index_of: dict[str, int], size: int) -> np.ndarray:
    """The selection's final coverage (s over labels for MIG, x over tree nodes for TAGS) from selection_coverage."""
    coverage = np.zeros(size, dtype=np.float64)
    for label, value in con.execute(
        "SELECT label, coverage FROM selection_coverage WHERE selection = ? AND version = ?", [chosen["selection"], chosen["version"]]
    ).fetchall():
        if label in index_of:
            coverage[index_of[label]] = value
    return coverage


def _final_tree_gain(con, chosen: dict, source: dict, tags: dict | None, tree) -> float:
    """TAGS' exact tree-level gain sum_v beta_h(v) [phi(x_v + u_v) - phi(x_v)] of the sample against the
    selection's final node coverage x, u = its path vector (its tags' leaves, quality-weighted, decayed upward)."""
    config = json.loads(chosen["config"])
    score = source["weight"] if source["weight"] is not None else chosen["score_fill"]
    one = PoolArrays([source["sample_id"]], [(tags or {}).get("tags") or []], np.array([score], dtype=np.float64), np.zeros(1, np.int64))
    problem = tags_problem(one, tree, config["gamma"], config["level_weights"])
    x = _final_coverage(con, chosen, {str(v): v for v in range(tree.n_nodes)}, tree.n_nodes)
    u = problem.paths.toarray()[0]
    params = MigParams(phi_a=config["phi_a"], phi_b=config["phi_b"])
    return float(np.sum(problem.node_weights * (phi(x + u, params) - phi(x, params))))


def _final_gain(con, chosen: dict, source: dict, tags: dict | None) -> float:
    """Gradient gain Y_i . phi'(s) of the sample against the selection's final coverage s."""
    config = json.loads(chosen["config"])
    params = MigParams(
        prop_weight=config["prop_weight"], norm=config["norm"], phi=config["phi"], phi_a=config["phi_a"],
        phi_b=config["phi_b"], phi_alpha=config["phi_alpha"], gain="gradient",
    )
    labels = [label for (label,) in con.execute("SELECT label FROM label_graph_labels ORDER BY label_id").fetchall()]
    column = {label: j for j, label in enumerate(labels)}
    src, dst, weight = con.execute("SELECT list(src), list(dst), list(weight) FROM label_graph_edges").fetchall()[0]
    W = sp.csr_array((np.asarray(weight or [], np.float32), (np.asarray(src or [], np.int64), np.asarray(dst or [], np.int64))), shape=(len(labels), len(labels)))
    sample_columns = [column[t] for t in (tags or {}).get("tags") or [] if t in column]
    score = source["weight"] if source["weight"] is not None else chosen["score_fill"]
    X = sample_label_matrix([0, len(sample_columns)], sample_columns, [score], len(labels), params.norm)
    Y = propagate(X, propagation_matrix(W, params.prop_weight))
    coverage = _final_coverage(con, chosen, column, len(labels)).astype(np.float32)
    return float((Y.toarray()[0].astype(np.float64) * phi_prime(coverage, params).astype(np.float64)).sum())
