"""Why is this sample (not) in the subset? Lineage of one sample, answered from the DuckDB catalog
and, for a selection version, from the inputs that version used (``core/selection/lineage.py``).

From the selection back to the shard: source file and line, the raw input record, ingestion run,
tags with tagger and parse status, quality weight and its origin, embedding model, then the
selection version's rank, gain at pick time and contributing labels, or, for a sample that was not
picked, its gain at the end of the selection against the last pick's (MIG: the gradient gain over
the version's label graph; TAGS: the exact tree-level gain, given the knowledge tree). When the
current upstream differs from what the version used, ``changed_since_version`` says what changed
(before and after) and which run changed it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from mig_assets.core.curation.exclusions import exclusion_of
from mig_assets.core.mig.problem import MigParams, phi, phi_prime, propagate, propagation_matrix, sample_label_matrix
from mig_assets.core.selection.input_changes import input_changes, upstream_changes
from mig_assets.core.selection.inputs import PoolArrays
from mig_assets.core.selection.lineage import (
    current_inputs,
    graph_path,
    inputs_path,
    raw_sha256,
    read_facts,
    read_graph,
    read_inputs_row,
    with_raw_records,
)
from mig_assets.core.selection.run import tags_problem
from mig_assets.core.store.catalog import has_relation, sample_copies, warehouse_dir_of


def _one(con, sql: str, params: list) -> dict | None:
    cursor = con.execute(sql, params)
    names = [d[0] for d in cursor.description]
    row = cursor.fetchall()
    return dict(zip(names, row[0])) if row else None


def resolve_sample_id(con, prefix: str, inputs_file: Path | None = None) -> str:
    """Full sample_id from an unambiguous prefix (at least 8 hex characters, any case), among the
    pool's rows and the rows of a selection version's inputs (a sample its shard no longer holds)."""
    if len(prefix) < 8:
        raise ValueError("give at least 8 characters of the sample_id")
    if not has_relation(con, "raw_pool_rows"):
        raise ValueError("the catalog holds no samples yet: ingest a shard first (mig-assets ingest FILE)")
    prefix = prefix.lower()  # ids are lower-case hex SHA-256
    known = "SELECT sample_id FROM raw_pool_rows"
    params = [prefix]
    if inputs_file is not None:
        known, params = known + " UNION SELECT sample_id FROM read_parquet(?)", [str(inputs_file), prefix]
    rows = con.execute(f"SELECT DISTINCT sample_id FROM ({known}) WHERE starts_with(sample_id, ?) LIMIT 2", params).fetchall()
    if not rows:
        raise ValueError(f"no sample_id starts with {prefix!r}")
    if len(rows) > 1:
        raise ValueError(f"{prefix!r} matches several samples; give more characters")
    return rows[0][0]


def explain(
    con,
    sample_id: str,
    selection: str | None = None,
    version: int | None = None,
    current_runs: Callable[[str | None], dict] | None = None,
    tree=None,
) -> dict:
    """The lineage of ``sample_id`` and its fate in ``selection`` (latest version by default).

    With the version's input snapshot, tags, weight, raw record and fate come from what the version
    used; ``current_runs(shard)`` ({asset: {run_id, data_version}} of the latest materializations
    of the shard's inputs; ``current_runs(None)``: of the global inputs) names the runs that changed
    an input since. ``tree`` (the current ``KnowledgeTree``) lets a TAGS selection recompute a
    rejected sample's gain."""
    if not has_relation(con, "selections") and (selection is not None or version is not None):
        raise ValueError("no selection has been made yet, so there is no --selection/--version to explain against")
    chosen = _chosen_version(con, selection, version) if has_relation(con, "selections") else None
    warehouse_dir = warehouse_dir_of(con)
    inputs_file = inputs_path(warehouse_dir, chosen["selection"], chosen["version"]) if chosen else None
    inputs_file = inputs_file if inputs_file is not None and inputs_file.exists() else None
    sample_id = resolve_sample_id(con, sample_id, inputs_file)
    answer, ingested_at = _current_lineage(con, sample_id)
    used = read_inputs_row(con, inputs_file, sample_id) if inputs_file is not None else None
    if used is not None and inputs_file is not None:
        answer, inputs = _answer_from_version_inputs(con, used, inputs_file, answer, current_runs)
    elif answer is None:
        raise ValueError(f"sample {sample_id} is in no shard and not in the inputs of the selection asked about")
    else:
        tags = answer["tags"] or {}
        scored = answer["quality"].get("quality_scores")
        inputs = {
            "tags": tags.get("tags") or [],
            "tag_status": tags.get("status"),
            "tag_reason": tags.get("reason"),
            # what the selections weigh it by: the scored quality first, then the imported one
            "weight": scored["score"] if scored and scored["status"] == "ok" else answer["quality"]["imported_deita_score"],
            # no snapshot (a version made before snapshots): judge by the ingestion time
            "in_pool_then": inputs_file is None and (chosen is None or ingested_at is None or ingested_at <= chosen["created_at"]),
        }
    if chosen is not None:
        answer["selection"] = _selection_fate(con, sample_id, chosen, inputs, warehouse_dir, tree)
    return answer


def _current_lineage(con, sample_id: str) -> tuple[dict | None, object]:
    """Source, tags, quality and embedding model of the sample as the catalog holds them now (None
    when no shard holds it), and when its shard was ingested."""
    source = _one(
        con,
        """SELECT s.sample_id, s.shard, s.source_file, s.line_no, s.source_format, s.original_id, s.source,
                  s.ingest_run_id, s.imported_quality, s.n_tokens_est, s.raw, st.file_sha256, st.ingested_at
           FROM samples s LEFT JOIN shards st USING (shard) WHERE s.sample_id = ?""",
        [sample_id],
    )
    if source is None:
        return None, None
    copies = con.execute("SELECT shard || ':' || line_no FROM duplicates WHERE sample_id = ? ORDER BY shard, line_no", [sample_id]).fetchall()
    answer: dict = {
        "sample_id": sample_id,
        "source": {k: source[k] for k in ("shard", "source_file", "line_no", "source_format", "original_id", "source", "ingest_run_id", "file_sha256")},
        "raw_record": source["raw"],
        "ingested_at": str(source["ingested_at"]),
        "duplicate_copies": [c for (c,) in copies],
        "quality": {"imported_deita_score": source["imported_quality"]},
    }
    if has_relation(con, "quality_scores"):
        answer["quality"]["quality_scores"] = _one(
            con,
            "SELECT score, status, reason, backend, model, prompt_version FROM quality_scores WHERE sample_id = ? ORDER BY status = 'ok' DESC LIMIT 1",
            [sample_id],
        )
    answer["tags"] = (
        _one(
            con,
            "SELECT tags, surface_tags, status, reason, backend, model, prompt_version, truncated, attempts FROM atomic_tags WHERE sample_id = ?",
            [sample_id],
        )
        if has_relation(con, "atomic_tags")
        else None
    )
    if has_relation(con, "sample_embeddings"):
        embedding = _one(con, "SELECT model_id FROM sample_embeddings WHERE sample_id = ?", [sample_id])
        answer["embedding_model"] = embedding["model_id"] if embedding else None
    return answer, source["ingested_at"]


def _answer_from_version_inputs(con, used: dict, inputs_file: Path, current: dict | None, current_runs) -> tuple[dict, dict]:
    """The answer from the version's snapshot row ``used``, what changed since (against the
    ``current`` lineage and the current runs), and the inputs the fate is judged on."""
    now = with_raw_records(current_inputs(con, [used["sample_id"]]), sample_copies(con, [used["sample_id"]], "sample_id, raw")).to_pylist()
    now = now[0] if now else None
    facts = read_facts(inputs_file)
    runs_then = facts["shards"].get(used["shard"], {})
    runs_now = current_runs(now["shard"]) if current_runs is not None and now is not None else None
    changes = input_changes(used, now, runs_then, runs_now)
    upstream = upstream_changes(facts, {"inputs": current_runs(None)}) if current_runs is not None else {}
    answer = _lineage_at_version(used, runs_then, inputs_file) | {
        "upstream_at_version": facts["inputs"],
        "changed_since_version": changes | ({"upstream": upstream} if upstream else {}),
        "current": current,
    }
    inputs = {"tags": used["tags"] or [], "tag_status": used["tag_status"], "tag_reason": used["tag_reason"], "weight": used["weight"], "in_pool_then": True}
    return answer, inputs


def _lineage_at_version(used: dict, runs_then: dict, inputs_file: Path) -> dict:
    """The sample's inputs as the selection version saw them (its snapshot row)."""

    def run(asset, key="run_id"):
        return (runs_then.get(asset) or {}).get(key)

    return {
        "sample_id": used["sample_id"],
        "inputs_of_version": str(inputs_file),
        "source": {k: used[k] for k in ("shard", "source_file", "line_no", "source_format", "original_id", "file_sha256", "ingest_run_id")},
        "raw_record": {"text": used["raw"], "sha256": raw_sha256(used["raw"])} if used["raw"] is not None else None,
        "tags": {
            "tags": used["tags"],
            "status": used["tag_status"],
            "reason": used["tag_reason"],
            "tagger": used["tagger"],
            "tagger_version": run("atomic_tags", "code_version"),
            "run_id": run("atomic_tags"),
        },
        "quality": {
            "weight": used["weight"],
            "origin": used["weight_origin"],
            "scorer": used["scorer"],
            "scorer_version": run("quality_scores", "code_version"),
            "run_id": run("quality_scores"),
        },
        "embedding_model": used["embedding_model"],
    }


def _chosen_version(con, selection: str | None, version: int | None) -> dict | None:
    params: list[object] = [selection] if selection else []
    where = "selection = ?" if selection else "TRUE"
    if version is not None:
        where, params = where + " AND version = ?", params + [version]
    chosen = _one(con, f"SELECT * FROM selections WHERE {where} ORDER BY created_at DESC LIMIT 1", params)
    if chosen is None and (selection is not None or version is not None):
        known = con.execute("SELECT selection, max(version) FROM selections GROUP BY selection ORDER BY selection").fetchall()
        asked = " ".join(part for part in (f"selection {selection!r}" if selection else "", f"version {version}" if version is not None else "") if part)
        raise ValueError(
            f"no {asked} in the catalog; known selections (latest version): " + (", ".join(f"{name} (v{latest})" for name, latest in known) or "none")
        )
    return chosen


def _selection_fate(con, sample_id: str, chosen: dict, inputs: dict, warehouse_dir: Path, tree=None) -> dict:
    """Rank, gain and labels of a member; for another sample, why not (recomputed from ``inputs``:
    the sample's tags, tag status and weight as the version used them)."""
    fate = {k: chosen[k] for k in ("selection", "version", "method", "budget", "n_selected", "n_pool", "run_id", "export_dir")}
    fate["config"] = json.loads(chosen["config"])
    fate["created_at"] = str(chosen["created_at"])
    fate["score_origin"] = chosen["score_origin"]
    member = _one(
        con,
        "SELECT rank, gain, objective, top_labels FROM selection_members WHERE selection = ? AND version = ? AND sample_id = ?",
        [chosen["selection"], chosen["version"], sample_id],
    )
    if member is not None:
        return fate | {"selected": True} | member
    fate["selected"] = False
    excluded = exclusion_of(con, chosen["selection"], chosen["version"], sample_id)
    if excluded is not None:
        fate["why_not"] = excluded
    elif not inputs["in_pool_then"]:
        fate["why_not"] = "the sample was ingested after this selection version was made"
    elif inputs["tag_status"] == "failed":
        fate["why_not"] = f"excluded: its tagging failed ({inputs['tag_reason']})"
    elif chosen["method"] == "tags" and tree is None:
        fate["why_not"] = "TAGS' greedy never ranked its tree-level information gain within the budget (no tree to recompute it)"
    elif chosen["method"] not in ("mig", "tags"):
        fate["why_not"] = f"the {chosen['method']} sampler (seed {fate['config'].get('seed')}) did not draw it"
    else:
        last = con.execute(
            "SELECT gain FROM selection_members WHERE selection = ? AND version = ? ORDER BY rank DESC LIMIT 1",
            [chosen["selection"], chosen["version"]],
        ).fetchall()
        weight = inputs["weight"] if inputs["weight"] is not None else chosen["score_fill"]
        config = json.loads(chosen["config"])
        mig = chosen["method"] == "mig"
        if mig:
            gain = final_gain(inputs["tags"], weight, *_version_graph(con, chosen, warehouse_dir), config)
        else:
            coverage = _stored_coverage(con, chosen, {str(v): v for v in range(tree.n_nodes)}, tree.n_nodes)
            gain = final_tree_gain(inputs["tags"], weight, tree, coverage, config)
        fate["gain_at_end"] = gain
        fate["last_pick_gain"] = last[0][0] if last else None
        covered = "the labels it carries were already covered" if mig else "the tree nodes its tags reach were already covered"
        aligned = (
            ""
            if mig or fate["config"].get("align", "none") == "none"
            else (f" (tree-level information only; the last pick's gain also has the {fate['config']['align']} alignment term)")
        )
        fate["why_not"] = (
            f"its gain once the selection was complete ({gain:.6g}) is below the last pick's gain ({fate['last_pick_gain']:.6g}): {covered}{aligned}"
            if last
            else "the budget allowed no pick"
        )
    return fate


def _version_graph(con, chosen: dict, warehouse_dir: Path) -> tuple[list[str], sp.csr_array, np.ndarray]:
    """Labels, W and final coverage of a MIG version: from its snapshot, or (a version made before
    snapshots) the current label graph with the stored coverage."""
    snapshot = graph_path(warehouse_dir, chosen["selection"], chosen["version"])
    if snapshot.exists():
        return read_graph(snapshot)
    labels = [label for (label,) in con.execute("SELECT label FROM label_graph_labels ORDER BY label_id").fetchall()]
    src, dst, weight = con.execute("SELECT list(src), list(dst), list(weight) FROM label_graph_edges").fetchall()[0]
    W = sp.csr_array(
        (np.asarray(weight or [], np.float32), (np.asarray(src or [], np.int64), np.asarray(dst or [], np.int64))), shape=(len(labels), len(labels))
    )
    return labels, W, _stored_coverage(con, chosen, {label: j for j, label in enumerate(labels)}, len(labels))


def _stored_coverage(con, chosen: dict, index_of: dict[str, int], size: int) -> np.ndarray:
    """A version's final coverage from selection_coverage: s over labels (MIG), x over tree node ids (TAGS)."""
    coverage = np.zeros(size, dtype=np.float64)
    for label, value in con.execute(
        "SELECT label, coverage FROM selection_coverage WHERE selection = ? AND version = ?", [chosen["selection"], chosen["version"]]
    ).fetchall():
        if label in index_of:
            coverage[index_of[label]] = value
    return coverage


def final_tree_gain(tags: list[str], weight: float, tree, coverage: np.ndarray, config: dict) -> float:
    """TAGS' exact tree-level gain sum_v beta_h(v) [phi(x_v + u_v) - phi(x_v)] of a sample against a
    final node coverage x, u = its path vector (its tags' leaves, weighted, decayed upward)."""
    one = PoolArrays(["sample"], [tags], np.array([weight], dtype=np.float64), np.zeros(1, np.int64))
    problem = tags_problem(one, tree, config["gamma"], config["level_weights"])
    u = problem.paths.toarray()[0]
    params = MigParams(phi_a=config["phi_a"], phi_b=config["phi_b"])
    return float(np.sum(problem.node_weights * (phi(coverage + u, params) - phi(coverage, params))))


def final_gain(tags: list[str], weight: float, labels: list[str], W: sp.csr_array, coverage: np.ndarray, config: dict) -> float:
    """Gradient gain Y_i . phi'(s) of a sample (``tags``, ``weight``) against a final coverage s."""
    params = MigParams(
        prop_weight=config["prop_weight"],
        norm=config["norm"],
        phi=config["phi"],
        phi_a=config["phi_a"],
        phi_b=config["phi_b"],
        phi_alpha=config["phi_alpha"],
        gain="gradient",
    )
    column = {label: j for j, label in enumerate(labels)}
    sample_columns = [column[t] for t in tags if t in column]
    X = sample_label_matrix([0, len(sample_columns)], sample_columns, [weight], len(labels), params.norm)
    Y = propagate(X, propagation_matrix(W, params.prop_weight))
    s = np.asarray(coverage, dtype=np.float32)
    return float((Y.toarray()[0].astype(np.float64) * phi_prime(s, params).astype(np.float64)).sum())
