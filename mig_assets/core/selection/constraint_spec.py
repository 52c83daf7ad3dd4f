"""The user-facing form of selection constraints (a spec's ``constraints:``) and its resolution to arrays.

    constraints:
      must_include: {ids_file: pinned.txt}                 # one sample_id per line; '#' comments
      must_exclude: {where: "source_format = 'alpaca'"}    # a SQL predicate over the samples view
      max_share: {by: source_file, share: 0.3, groups: {big.jsonl: 0.5}}   # by source_file | shard | source_format
      label_counts: {python: {min: 2, max: 40}}            # MIG: tags; TAGS: tree leaves

``must_include`` / ``must_exclude`` take ``ids_file``, ``where`` or both (their union). A relative
``ids_file`` is read from the folder of the specs file. :func:`resolve_constraints` turns a spec into
the arrays of :class:`~mig_assets.core.selection.constraints.Constraints` over the pool's rows,
with one query per form over the DuckDB catalog.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import scipy.sparse as sp

from mig_assets.core.selection.constraints import Constraints
from mig_assets.core.validation import first_few

GROUP_COLUMNS = ("source_file", "shard", "source_format")


@dataclass(frozen=True)
class SampleSet:
    """Samples named by an ids file, a SQL predicate over ``samples``, or both (their union)."""

    ids_file: str = ""
    where: str = ""


@dataclass(frozen=True)
class ConstraintSpec:
    must_include: SampleSet = SampleSet()
    must_exclude: SampleSet = SampleSet()
    max_share_by: str = ""  # a GROUP_COLUMNS entry; empty: no cap
    max_share: float = 1.0  # every group's cap, as a share of the budget
    group_shares: dict[str, float] = field(default_factory=dict)  # per-group overrides
    label_counts: dict[str, tuple[int, int | None]] = field(default_factory=dict)  # label -> (min, max or None)

    def describe(self) -> dict:
        """The spec as plain values, for metadata and manifests."""
        out: dict = {}
        for key in ("must_include", "must_exclude"):
            sample_set = getattr(self, key)
            if sample_set.ids_file or sample_set.where:
                out[key] = {k: v for k, v in vars(sample_set).items() if v}
        if self.max_share_by:
            out["max_share"] = {"by": self.max_share_by, "share": self.max_share, "groups": dict(self.group_shares)}
        if self.label_counts:
            out["label_counts"] = {label: {"min": low, "max": high} for label, (low, high) in self.label_counts.items()}
        return out


def _mapping(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping, got {value!r}")
    return value


def _unknown(entry: dict, allowed: set[str], where: str) -> None:
    unknown = set(entry) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; expected {sorted(allowed)}")


def _share(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{where}: a share must be a number in [0, 1], got {value!r}")
    return float(value)


def _sample_set(value, where: str, base_dir: Path) -> SampleSet:
    entry = _mapping(value, where)
    _unknown(entry, {"ids_file", "where"}, where)
    ids_file, predicate = entry.get("ids_file", ""), entry.get("where", "")
    if not isinstance(ids_file, str) or not isinstance(predicate, str) or not (ids_file or predicate):
        raise ValueError(f"{where}: give ids_file (a path) and/or where (a SQL predicate over samples), got {value!r}")
    if ids_file and not Path(ids_file).is_absolute():
        ids_file = str(base_dir / ids_file)
    return SampleSet(ids_file, predicate)


def _bound(value, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}: expected a count >= 0, got {value!r}")
    return value


def parse_constraints(value, where: str, base_dir: Path) -> ConstraintSpec:
    """A spec's ``constraints:`` mapping, checked; errors name the key (``where`` locates the spec)."""
    entry = _mapping(value, where)
    _unknown(entry, {"must_include", "must_exclude", "max_share", "label_counts"}, where)
    fields: dict = {}
    for key in ("must_include", "must_exclude"):
        if key in entry:
            fields[key] = _sample_set(entry[key], f"{where}.{key}", base_dir)
    if "max_share" in entry:
        cap = _mapping(entry["max_share"], f"{where}.max_share")
        _unknown(cap, {"by", "share", "groups"}, f"{where}.max_share")
        if cap.get("by") not in GROUP_COLUMNS:
            raise ValueError(f"{where}.max_share.by: expected one of {', '.join(GROUP_COLUMNS)}, got {cap.get('by')!r}")
        fields["max_share_by"] = cap["by"]
        fields["max_share"] = _share(cap.get("share", 1.0), f"{where}.max_share.share")
        groups = _mapping(cap.get("groups", {}) or {}, f"{where}.max_share.groups")
        fields["group_shares"] = {str(g): _share(s, f"{where}.max_share.groups.{g}") for g, s in groups.items()}
    if "label_counts" in entry:
        bounds = {}
        for label, bound in _mapping(entry["label_counts"], f"{where}.label_counts").items():
            at = f"{where}.label_counts.{label}"
            bound = _mapping(bound, at)
            _unknown(bound, {"min", "max"}, at)
            low, high = _bound(bound.get("min", 0), f"{at}.min") or 0, _bound(bound.get("max"), f"{at}.max")
            bounds[str(label)] = (low, high)
        fields["label_counts"] = bounds
    return ConstraintSpec(**fields)


def _rows_of(con, sample_set: SampleSet, which: str, row_of: dict[str, int], *, strict: bool) -> set[int]:
    """Pool rows of a sample set. ``strict``: an id of the file that is not in the pool is an error
    naming the file and line (a must_include sample cannot be picked)."""
    rows: set[int] = set()
    if sample_set.ids_file:
        path = Path(sample_set.ids_file)
        if not path.is_file():
            raise ValueError(f"{which}.ids_file: {path} does not exist")
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            sample_id = line.split("#", 1)[0].strip().lower()
            if not sample_id:
                continue
            if sample_id in row_of:
                rows.add(row_of[sample_id])
            elif strict:
                raise ValueError(f"{which}.ids_file {path} line {line_no}: sample_id {sample_id!r} is not in the pool (not ingested, or its tagging failed)")
    if sample_set.where:
        try:
            found = con.execute(f"SELECT sample_id FROM samples WHERE ({sample_set.where})").fetchall()
        except duckdb.Error as error:
            raise ValueError(f"{which}.where {sample_set.where!r} is not a valid predicate over the samples view: {error}") from error
        rows.update(row_of[sid] for (sid,) in found if sid in row_of)
    return rows


def tag_membership(tags: list[list[str]], labels: list[str]) -> sp.csr_array:
    """(N, M) 0/1: which samples carry each of ``labels`` among their tags; a label no sample carries is an error."""
    column_of = {label: m for m, label in enumerate(labels)}
    rows, cols = [], []
    for i, sample_tags in enumerate(tags):
        for m in {column_of[t] for t in sample_tags if t in column_of}:
            rows.append(i)
            cols.append(m)
    absent = [label for m, label in enumerate(labels) if m not in set(cols)]
    if absent:
        raise ValueError(f"label_counts: {first_few(absent)} are not tags of any pool sample")
    return sp.csr_array((np.ones(len(rows), np.int64), (rows, cols)), shape=(len(tags), len(labels)))


def leaf_membership(tree, tags: list[list[str]], leaves: list[str]) -> sp.csr_array:
    """(N, M) 0/1: which samples have a tag on each of the tree leaves named ``leaves``; an unknown name is an error."""
    leaf_names = list(tree.names[: tree.n_leaves])
    column_of = {name: m for m, name in enumerate(leaves)}
    unknown = [name for name in leaves if name not in set(leaf_names)]
    if unknown:
        raise ValueError(f"label_counts: {first_few(unknown)} are not leaves of the knowledge tree (e.g. {first_few(leaf_names)})")
    wanted = np.full(tree.n_leaves, -1, np.int64)
    for leaf, name in enumerate(leaf_names):
        wanted[leaf] = column_of.get(name, -1)
    flat = tree.leaf_of([t for sample_tags in tags for t in sample_tags])
    rows = np.repeat(np.arange(len(tags)), [len(t) for t in tags])
    columns = np.where(flat >= 0, wanted[np.maximum(flat, 0)], -1)
    keep = columns >= 0
    members = sp.csr_array((np.ones(int(keep.sum()), np.int64), (rows[keep], columns[keep])), shape=(len(tags), len(leaves)))
    members.sum_duplicates()
    return members


def resolve_constraints(
    con,
    spec: ConstraintSpec,
    sample_ids: list[str],
    label_membership: Callable[[list[str]], sp.csr_array] | None = None,
    label_kind: str = "label",
) -> Constraints:
    """The spec as arrays over the pool's rows (``sample_ids``, in pool order).

    ``label_membership(names)`` gives the (N, len(names)) rows carrying each bounded label (MIG: the
    samples' tags, TAGS: their leaves) and raises for a name it does not know.
    """
    row_of = {sid: i for i, sid in enumerate(sample_ids)}
    n = len(sample_ids)
    pinned = sorted(_rows_of(con, spec.must_include, "must_include", row_of, strict=True))
    banned = np.zeros(n, bool)
    banned[sorted(_rows_of(con, spec.must_exclude, "must_exclude", row_of, strict=False))] = True
    fields: dict = {"pinned": np.asarray(pinned, np.int64), "banned": banned}
    if spec.max_share_by:
        group_of = dict(con.execute(f"SELECT sample_id, coalesce({spec.max_share_by}, '') FROM samples").fetchall())
        values = [group_of.get(sid, "") for sid in sample_ids]
        names = sorted(set(values))
        unknown = sorted(set(spec.group_shares) - set(names))
        if unknown:
            raise ValueError(f"max_share.groups: {first_few(unknown)} are not {spec.max_share_by} values of the pool; it has {first_few(names)}")
        index = {name: g for g, name in enumerate(names)}
        fields |= {
            "group_ids": np.array([index[v] for v in values], np.int64),
            "group_share": np.array([spec.group_shares.get(name, spec.max_share) for name in names]),
            "group_names": tuple(names),
            "group_by": spec.max_share_by,
        }
    if spec.label_counts:
        if label_membership is None:
            raise ValueError("label_counts: this method has no labels to count (use it with mig or tags)")
        names = list(spec.label_counts)
        fields |= {
            "label_members": label_membership(names),
            "label_min": np.array([spec.label_counts[name][0] for name in names], np.int64),
            "label_max": np.array([n if spec.label_counts[name][1] is None else spec.label_counts[name][1] for name in names], np.int64),
            "label_names": tuple(f"{label_kind} {name}" for name in names),
        }
    return Constraints(n, **fields)


def constraint_report(constraints: Constraints, order: np.ndarray) -> dict:
    """What the constraints did to a selection: pinned and excluded counts, picks per group against its
    cap, picks per bounded label against its bounds (for the materialization metadata)."""
    k = len(order)
    report: dict = {"must_include": len(constraints.pinned), "must_exclude": int(constraints.banned.sum())}
    if constraints.group_ids is not None:
        counts, caps = np.bincount(constraints.group_ids[order], minlength=len(constraints.group_share)), constraints.group_caps(k)
        report[f"max_share by {constraints.group_by}"] = {name: f"{counts[g]} / cap {caps[g]}" for g, name in enumerate(constraints.group_names)}
    if constraints.label_members is not None:
        counts = np.asarray(constraints.label_members[order].sum(axis=0)).ravel()
        report["label_counts"] = {
            name: f"{counts[m]} in [{constraints.label_min[m]}, {constraints.label_max[m]}]" for m, name in enumerate(constraints.label_names)
        }
    return report


def constraint_reasons(constraints: Constraints, order: np.ndarray) -> dict[int, str]:
    """Rows whose place in a selection of ``order`` a constraint decided, by row: pinned ones, excluded
    ones, and unpicked rows of a group or carrying a label that the selection filled to its cap."""
    k, picked = len(order), np.zeros(constraints.n_samples, bool)
    picked[np.asarray(order, np.int64)] = True
    reasons: dict[int, str] = {}
    if constraints.group_ids is not None:
        counts, caps = np.bincount(constraints.group_ids[order], minlength=len(constraints.group_share)), constraints.group_caps(k)
        for g in np.flatnonzero(counts >= caps).tolist():
            text = f"max_share: its {constraints.group_by} {constraints.group_names[g]!r} is at its cap of {caps[g]} picks"
            reasons |= dict.fromkeys(np.flatnonzero((constraints.group_ids == g) & ~picked).tolist(), text)
    if constraints.label_members is not None:
        counts = np.asarray(constraints.label_members[order].sum(axis=0)).ravel()
        columns = sp.csc_array(constraints.label_members)
        for m in np.flatnonzero(counts >= constraints.label_max).tolist():
            rows = columns.indices[columns.indptr[m] : columns.indptr[m + 1]]
            text = f"label_counts: {constraints.label_names[m]!r} is at its max of {constraints.label_max[m]} picks"
            reasons |= dict.fromkeys(rows[~picked[rows]].tolist(), text)
    reasons |= {int(row): "excluded by must_exclude" for row in np.flatnonzero(constraints.banned).tolist()}
    reasons |= {int(row): "pinned by must_include" for row in constraints.pinned.tolist()}
    return reasons
