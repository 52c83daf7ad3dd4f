"""What changed in a selection version's inputs since: a previous member's tags, quality, raw record
and embedding model against the current ones (its snapshot row, from core/selection/lineage.py,
against the current row), with the run that changed each; the global upstream assets materialized
again between two versions; the summary a version's report shows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mig_assets.core.selection.lineage import IMPORTED_ORIGIN, INPUTS_SCHEMA, SHARD_INPUT_ASSETS, as_array, raw_sha256

# the asset whose re-materialization changes each compared field
CHANGED_BY = {"tags": "atomic_tags", "quality": "quality_scores", "raw_record": "raw_pool", "embedding_model": "sample_embeddings"}


def _score(row: dict) -> tuple[float | None, str | None]:
    """A sample's own quality score and its origin (None, None: it had none, whatever fill it got)."""
    origin = row["weight_origin"] or ""
    return (row["weight"], origin) if origin.startswith(("quality_scores (", IMPORTED_ORIGIN)) else (None, None)


def input_changes(then: dict, now: dict | None, runs_then: dict | None = None, runs_now: dict | None = None) -> dict:
    """What differs between a sample's inputs at a version (``then``) and now (``now``; None: the
    sample is no longer in the pool), field by field with before/after, the run that made the
    current value and the code versions (``runs_*``: {asset: {run_id, data_version, code_version}}
    of the sample's shard)."""
    if now is None:
        return {"removed_from_pool": f"shard {then['shard']} no longer holds this sample"}
    changes = {}
    if (then["tags"], then["tag_status"], then["tagger"]) != (now["tags"], now["tag_status"], now["tagger"]):
        changes["tags"] = {
            "before": then["tags"],
            "after": now["tags"],
            "tagger_before": then["tagger"],
            "tagger_after": now["tagger"],
            "status_before": then["tag_status"],
            "status_after": now["tag_status"],
        }
    if _score(then) != _score(now):
        changes["quality"] = {
            "score_before": _score(then)[0],
            "score_after": _score(now)[0],
            "scorer_before": _score(then)[1],
            "scorer_after": _score(now)[1],
        }
    if then["raw"] is not None and now["raw"] is not None and then["raw"] != now["raw"]:
        changes["raw_record"] = {
            "sha256_before": raw_sha256(then["raw"]),
            "sha256_after": raw_sha256(now["raw"]),
            "file_sha256_before": then["file_sha256"],
            "file_sha256_after": now["file_sha256"],
            "line_before": then["line_no"],
            "line_after": now["line_no"],
        }
    if then["embedding_model"] != now["embedding_model"]:
        changes["embedding_model"] = {"before": then["embedding_model"], "after": now["embedding_model"]}
    for field, change in changes.items():
        asset = CHANGED_BY[field]
        then_run, now_run = (runs_then or {}).get(asset) or {}, (runs_now or {}).get(asset) or {}
        change["changed_by_run"] = now["ingest_run_id"] if asset == "raw_pool" else now_run.get("run_id")
        change["run_at_version"] = then["ingest_run_id"] if asset == "raw_pool" else then_run.get("run_id")
        # the asset's code version: the tagger's, scorer's or embedder's full version hash
        change["code_version_before"], change["code_version_after"] = then_run.get("code_version"), now_run.get("code_version")
    return changes


def member_changes(previous: pa.Table, previous_facts: dict, current: pa.Table, current_facts: dict) -> list[dict]:
    """For each member of a previous version, what changed in its inputs since (empty ones left out).

    :func:`input_changes` reads only the members whose compared inputs differ in some column (or
    that left the pool), found column by column in Arrow: a re-selection of 50,000 members mostly
    has none."""
    then_members = previous.filter(pc.is_valid(previous.column("rank")))
    position = pc.index_in(then_members.column("sample_id"), value_set=current.column("sample_id"))
    now_rows = current.take(position).cast(INPUTS_SCHEMA)  # aligned with then_members; null rows: left the pool
    differs = pc.is_null(position)
    for name in COMPARED:
        differs = pc.or_(differs, values_differ(then_members.column(name), now_rows.column(name)))
    shards_then, shards_now = previous_facts["shards"], current_facts["shards"]
    gone = pc.is_null(position).filter(differs).to_pylist()
    out = []
    for then, now, left in zip(then_members.filter(differs).to_pylist(), now_rows.filter(differs).to_pylist(), gone):
        now = None if left else now
        changes = input_changes(then, now, shards_then.get(then["shard"]), shards_now.get(now["shard"]) if now else None)
        if changes:
            out.append({"sample_id": then["sample_id"], "rank": then["rank"], **changes})
    return out


# the inputs input_changes compares (a superset: a row equal in all of them has no change)
COMPARED = ("tags", "tag_status", "tagger", "weight", "weight_origin", "raw", "embedding_model")


def values_differ(a: pa.ChunkedArray | pa.Array, b: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Row by row, whether ``a`` and ``b`` hold different values (two nulls are the same; a list
    differs in its length or in an item)."""
    a, b = as_array(a), as_array(b)
    one_null = pc.xor(pc.is_null(a), pc.is_null(b))
    if pa.types.is_list(a.type):
        lengths = pc.fill_null(pc.list_value_length(a), 0).to_numpy(zero_copy_only=False)
        other = pc.fill_null(pc.list_value_length(b), 0).to_numpy(zero_copy_only=False)
        differs = lengths != other
        same_length = ~differs & (lengths > 0)
        if same_length.any():  # item by item where the lengths agree
            rows = pa.array(same_length)
            items_differ = values_differ(pc.list_flatten(a.filter(rows)), pc.list_flatten(b.filter(rows))).to_numpy(zero_copy_only=False)
            starts = np.concatenate([[0], np.cumsum(lengths[same_length])[:-1]])
            differs[same_length] = np.add.reduceat(items_differ.astype(np.int64), starts) > 0
        return pc.or_(one_null, pa.array(differs))
    return pc.or_(one_null, pc.fill_null(pc.not_equal(a, b), False))


def upstream_changes(previous_facts: dict, current_facts: dict) -> dict:
    """The global (unpartitioned) upstream assets materialized again between two versions' facts,
    with the data versions and runs before and after. A run with the same data version is listed
    too: Dagster's default data version hashes code and inputs, not run config (``label_graph``'s
    tau), so only the version's own snapshot can say whether the content moved."""
    then, now = previous_facts["inputs"], current_facts["inputs"]
    return {
        asset: {
            "data_version_before": then[asset]["data_version"],
            "data_version_after": now[asset]["data_version"],
            "same_data_version": then[asset]["data_version"] == now[asset]["data_version"],
            "run_at_version": then[asset]["run_id"],
            "changed_by_run": now[asset]["run_id"],
        }
        for asset in sorted(set(then) & set(now))
        if asset not in SHARD_INPUT_ASSETS and (then[asset]["run_id"], then[asset]["data_version"]) != (now[asset]["run_id"], now[asset]["data_version"])
    }


def changes_summary(changes: list[dict], previous_version: int, upstream: dict | None = None) -> list[dict]:
    """One row per (field, before -> after, run) with the number of previous members affected; then
    one row per global upstream asset that changed (``upstream``, from :func:`upstream_changes`)."""
    counts: dict[tuple, int] = {}
    for change in changes:
        for field in ("tags", "quality", "raw_record", "embedding_model", "removed_from_pool"):
            if field not in change:
                continue
            detail = change[field]
            if field == "tags":
                key = (field, f"tagger {detail['tagger_before']} -> {detail['tagger_after']}", detail["changed_by_run"])
            elif field == "quality":
                key = (field, f"scorer {detail['scorer_before']} -> {detail['scorer_after']}", detail["changed_by_run"])
            elif field == "raw_record":
                key = (field, f"shard file {detail['file_sha256_before'][:12]} -> {detail['file_sha256_after'][:12]}", detail["changed_by_run"])
            elif field == "embedding_model":
                key = (field, f"{detail['before']} -> {detail['after']}", detail["changed_by_run"])
            else:
                key = (field, detail, None)
            counts[key] = counts.get(key, 0) + 1
    members = f"members of v{previous_version}"
    rows = [
        {"input": field, "change": what, "changed by run": run or "", members: n}
        for (field, what, run), n in sorted(counts.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] or ""))
    ]
    return rows + [
        {
            "input": asset,
            "change": "materialized again, same data version"
            if c["same_data_version"]
            else f"data version {(c['data_version_before'] or '')[:12]} -> {(c['data_version_after'] or '')[:12]}",
            "changed by run": c["changed_by_run"],
            members: "all",
        }
        for asset, c in (upstream or {}).items()
    ]
