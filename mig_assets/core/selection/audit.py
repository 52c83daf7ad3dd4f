"""What a selection version leaves behind, written once: its rows in the global tables (members,
final coverage, the diff against the previous version with a reason per sample), its input
snapshot (core/selection/lineage.py), its manifest and its export folder with the report.

:func:`persist_selection` takes the request, inputs and outcome of one run, plus the
:class:`Provenance` the orchestrator knows (run id, upstream materializations, registered shards);
the version's row in ``selections`` is written last: it commits the version.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mig_assets.core.curation.exclusions import EXCLUSIONS_TABLE
from mig_assets.core.outputs.export import write_export
from mig_assets.core.outputs.report import selection_plots, selection_report
from mig_assets.core.selection.input_changes import changes_summary, member_changes, upstream_changes
from mig_assets.core.selection.inputs import PoolArrays, SelectionInputs
from mig_assets.core.selection.lineage import (
    current_inputs,
    graph_path,
    inputs_path,
    read_facts,
    snapshot_rows,
    with_raw_records,
    write_graph,
    write_inputs,
)
from mig_assets.core.selection.request import SelectionRequest
from mig_assets.core.selection.run import SelectionOutcome
from mig_assets.core.store.catalog import has_relation, insert_table, sample_copies
from mig_assets.core.store.layout import WarehouseLayout
from mig_assets.core.store.schema import SELECTION_TABLES


@dataclass
class Provenance:
    """What the orchestrator records with a version: the run, the code version of the selection,
    the latest materialization of each upstream asset, the registered shards, the settings, and a
    lookup of one shard's latest per-shard input materializations."""

    run_id: str
    code_version: str
    upstream: dict
    pool_shards: list[str]
    settings: dict
    shard_facts: Callable[[list[str]], dict[str, dict]]  # per shard: {asset: run id, data and code version} of its latest materializations


@dataclass
class PersistedSelection:
    version: int
    sample_ids: list[str]  # the members, in rank order
    diff: list[dict]  # added and removed samples since the previous version, with reasons
    inputs_changed: list[dict] | None  # None: the previous version has no input snapshot
    files: dict[str, str]  # export file name -> path
    plots: dict[str, bytes]
    inputs_snapshot: Path


def persist_selection(
    con, layout: WarehouseLayout, name: str, request: SelectionRequest, inputs: SelectionInputs, outcome: SelectionOutcome, provenance: Provenance
) -> PersistedSelection:
    """Write version n+1 of selection ``name``: members, coverage, diff, input snapshot, export."""
    pool, graph, tree = inputs.pool, inputs.graph, inputs.tree
    con.execute(SELECTION_TABLES)
    version = con.execute("SELECT coalesce(max(version), 0) + 1 FROM selections WHERE selection = ?", [name]).fetchall()[0][0]
    ids = [pool.sample_ids[i] for i in outcome.order]
    part = f"{name}-v{version:04d}"  # a retried version replaces its own rows
    members = pa.table(
        {
            "selection": [name] * len(ids),
            "version": pa.array([version] * len(ids), pa.int32()),
            "rank": pa.array(range(1, len(ids) + 1), pa.int32()),
            "sample_id": ids,
            "gain": pa.array(outcome.gains, pa.float64()),
            "objective": pa.array(outcome.objective, pa.float64()),
            "top_labels": pa.array(outcome.top_labels or [[] for _ in ids], pa.list_(pa.string())),
        }
    )
    insert_table(con, "selection_members", members, part=part)
    if outcome.coverage is not None and (graph is not None or tree is not None):
        # the final s (MIG, by label) or x (TAGS, by tree node id), to explain why a sample was not picked
        covered = np.flatnonzero(outcome.coverage)
        coverage = pa.table(
            {
                "selection": [name] * len(covered),
                "version": pa.array([version] * len(covered), pa.int32()),
                "label": [graph.labels[j] for j in covered] if graph is not None else [str(v) for v in covered],
                "coverage": pa.array(outcome.coverage[covered], pa.float64()),
            }
        )
        insert_table(con, "selection_coverage", coverage, part=part)
    previous = previous_members(layout.warehouse_dir, name, version)
    # the raw records of the members old and new (for the input snapshot) and the messages of the new (for the export), in one scan
    copies = sample_copies(con, set(ids) | set(previous.column("sample_id").to_pylist() if previous is not None else ()), "sample_id, raw, messages")
    messages_of = dict(zip(copies.column("sample_id").to_pylist(), copies.column("messages").to_pylist()))
    diff = inputs.exclusions.explain_removals(diff_against_previous(con, name, version, ids, pool, outcome))
    if diff:
        insert_table(con, "selection_diffs", pa.Table.from_pylist(diff), part=part)
    insert_table(con, EXCLUSIONS_TABLE, inputs.exclusions.table(name, version), part=part)
    manifest = selection_manifest(name, request, version, inputs, outcome, provenance)
    # the plots draw (Python, matplotlib) while the input snapshot is built and written (Arrow, Parquet: no GIL held)
    with ThreadPoolExecutor(1) as drawing:
        plots_drawn = drawing.submit(selection_plots, request.method, pool, outcome, tree, inputs.target)
        inputs_changed = record_inputs(
            con, layout.warehouse_dir, name, request.method, version, inputs, ids, outcome, provenance, previous, copies.select(["sample_id", "raw"])
        )
        plots = plots_drawn.result()
    budget = {kind: value for kind, value in vars(request.budget).items() if value is not None}
    report = selection_report(name, request.method, budget, version, pool, outcome, inputs.score_origin, plots, diff, inputs_changed, inputs.exclusions)
    export_dir = layout.exports_dir / name / f"v{version:04d}"
    files = write_export(
        export_dir,
        [{"rank": rank, "sample_id": sid, "messages": messages_of[sid]} for rank, sid in enumerate(ids, start=1)],
        manifest,
        name,
        extra_files={"report.html": report.encode(), **{f"{plot}.png": png for plot, png in plots.items()}},
    )
    row = [  # the columns of table selections, in order; written last: it commits the version
        name,
        version,
        request.method,
        request.budget.describe(),
        len(ids),
        len(pool.sample_ids),
        json.dumps(request.settings, sort_keys=True),
        inputs.score_origin,
        inputs.score_fill,
        float(outcome.objective[-1]) if len(ids) and request.method in ("mig", "tags") else None,
        str(export_dir),
        provenance.run_id,
        dt.datetime.now(dt.timezone.utc),
    ]
    insert_table(con, "selections", pa.table({f"c{i}": [value] for i, value in enumerate(row)}), part=part)
    return PersistedSelection(version, ids, diff, inputs_changed, files, plots, inputs_path(layout.warehouse_dir, name, version))


def diff_against_previous(con, name: str, version: int, ids: list[str], pool: PoolArrays, outcome: SelectionOutcome) -> list[dict]:
    """Samples added and removed since the previous version, each with the reason (the exact one a
    constraint or the warm start gave, ``outcome.reasons``, where there is one)."""
    reasons = {pool.sample_ids[row]: reason for row, reason in outcome.reasons.items()}
    previous = con.execute("SELECT created_at FROM selections WHERE selection = ? AND version = ?", [name, version - 1]).fetchall()
    if not previous:
        return []
    since = previous[0][0]
    before = [
        sid
        for (sid,) in con.execute("SELECT sample_id FROM selection_members WHERE selection = ? AND version = ? ORDER BY rank", [name, version - 1]).fetchall()
    ]
    new_shards = {shard for (shard,) in con.execute("SELECT shard FROM shards WHERE ingested_at > ?", [since]).fetchall()}
    added = sample_copies(con, sorted(set(ids) - set(before)), "sample_id, shard")
    shard_of = dict(zip(added.column("sample_id").to_pylist(), added.column("shard").to_pylist()))
    rank_of = {sid: rank for rank, sid in enumerate(ids, start=1)}
    in_pool, was_member = set(pool.sample_ids), set(before)
    last_gain = float(outcome.gains[-1]) if len(outcome.gains) else float("nan")
    rows = []
    for sid in ids:
        if sid in was_member:
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


def previous_members(warehouse_dir: Path, name: str, version: int) -> pa.Table | None:
    """The members' rows of the previous version's input snapshot (None: it has none); read alone,
    the other row groups skipped by their statistics."""
    path = inputs_path(warehouse_dir, name, version - 1)
    if not path.exists():
        return None
    previous = pq.read_table(path, filters=pc.is_valid(pc.field("rank")))
    return previous.filter(previous.column("rank").is_valid())


def record_inputs(
    con,
    warehouse_dir: Path,
    name: str,
    method: str,
    version: int,
    inputs: SelectionInputs,
    ids: list[str],
    outcome: SelectionOutcome,
    provenance: Provenance,
    previous: pa.Table | None,
    records: pa.Table,
) -> list[dict] | None:
    """Write the version's input snapshot (and, for MIG, its label graph and final coverage); returns
    what changed in the ``previous`` version's members' inputs since (:func:`previous_members`),
    summarized (None: the previous version has no snapshot). ``records``: the raw records of the
    members old and new (sample_id, raw)."""
    # the inputs as the selection loaded them (the same query as current_inputs), with the raw records of members old and new
    pool = inputs.pool
    if inputs.lineage is not None and pool.lineage_rows is not None:
        current, by_sample_id = with_raw_records(inputs.lineage.table, records), inputs.lineage.by_sample_id()
        rows = (pool.lineage_rows, pool.lineage_rows[outcome.order])
    else:
        current, by_sample_id, rows = with_raw_records(current_inputs(con), records), None, None
    shards = sorted(pc.unique(current.column("shard")).to_pylist())
    facts = {
        "selection": name,
        "version": version,
        "method": method,
        "run_id": provenance.run_id,
        "inputs": provenance.upstream,
        "shards": provenance.shard_facts(shards),
        "tag_embedding_model": con.execute("SELECT any_value(model_id) FROM label_graph_info").fetchall()[0][0]
        if has_relation(con, "label_graph_info")
        else None,
    }
    snapshot, order = snapshot_rows(current, pool.sample_ids, pool.scores, inputs.score_fill, ids, by_sample_id=by_sample_id, rows=rows)
    write_inputs(inputs_path(warehouse_dir, name, version), snapshot, facts, order)
    if inputs.graph is not None and outcome.coverage is not None:
        write_graph(graph_path(warehouse_dir, name, version), inputs.graph.labels, inputs.graph.weights, outcome.coverage)
    if previous is None:
        return None
    previous_facts = read_facts(inputs_path(warehouse_dir, name, version - 1))
    return changes_summary(member_changes(previous, previous_facts, current, facts), version - 1, upstream_changes(previous_facts, facts))


def selection_manifest(name: str, request: SelectionRequest, version: int, inputs: SelectionInputs, outcome: SelectionOutcome, provenance: Provenance) -> dict:
    """The export's manifest.json: what was selected, from which inputs, under which settings."""
    pool = inputs.pool
    return {
        "selection": name,
        "version": version,
        "method": request.method,
        "config": request.settings,
        **outcome.steering,  # constraints and stability option of the spec, when it has them
        "code_version": provenance.code_version,
        "run_id": provenance.run_id,
        "inputs": provenance.upstream,
        "pool_shards": sorted(provenance.pool_shards),
        "counts": {
            "pool": len(pool.sample_ids),
            "selected": len(outcome.order),
            "excluded_failed_tagging": inputs.failed,
            "selected_tokens_est": int(pool.tokens[outcome.order].sum()),
            **inputs.exclusions.counts(),
        },
        "curation": inputs.exclusions.record(),
        "score_origin": inputs.score_origin,
        "settings": provenance.settings,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
