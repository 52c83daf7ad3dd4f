"""How the ``mig-assets`` CLI launches Dagster runs in this process: the persistent instance at
``$DAGSTER_HOME``, the command's output sent to ``MIG_HOME/logs``, files ingested as ``pool_shards``
partitions (``ingest_job``), and the pipeline over the shards that need work (``tag_job`` range
runs, then ``reselect_job``). The commands themselves are in ``cli.py``.
"""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from mig_assets.core.ingest.shards import file_sha256
from mig_assets.core.store.layout import ShardPathError, WarehouseLayout

TOTALS = ("rows_read", "rows_kept", "rows_quarantined", "duplicates")
# runs launched from the CLI log at INFO (our progress lines), not Dagster's DEBUG event stream
CLI_LOGGING = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def dagster_instance(layout: WarehouseLayout):
    """The persistent instance at ``$DAGSTER_HOME`` (default ``$MIG_HOME/dagster``), created with the
    project's dagster.yaml when it does not exist yet."""
    import dagster as dg

    home = Path(os.environ.get("DAGSTER_HOME") or layout.home / "dagster")
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(resources.files("mig_assets").joinpath("dagster.yaml").read_text())
    os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


def log_file(layout: WarehouseLayout) -> Path:
    return layout.home / "logs" / "mig-assets.log"


@contextmanager
def output_to_log(layout: WarehouseLayout):
    """Send everything written to file descriptors 1 and 2 (Dagster's event log, engine
    subprocesses) to ``MIG_HOME/logs/mig-assets.log``; yields ``say``, which writes a progress line
    to the terminal. Afterwards stdout carries only the command's JSON result."""
    path = log_file(layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved_err), "w", buffering=1)
    with open(path, "a", buffering=1) as log:
        log.write(f"\n==== mig-assets {' '.join(sys.argv[1:])} ====\n")
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)

        def say(line: str) -> None:
            terminal.write(line + "\n")
            log.write(line + "\n")

        try:
            yield say
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            terminal.close()


def place_in_pool(layout: WarehouseLayout, path: Path) -> tuple[str, Path]:
    """Shard key and pool path of ``path``, copying it into pool/incoming when it lives elsewhere.

    A different file of the same name replaces the previous copy: it is a new version of that shard.
    """
    path = Path(path)
    if not path.is_file():
        raise ShardPathError(f"{path}: no such file")
    if path.resolve().is_relative_to(layout.incoming_dir.resolve()):
        return layout.shard_key(path), path
    target = layout.incoming_dir / path.name
    key = layout.shard_key(target)  # refuses a name that cannot be a shard before copying anything
    if not (target.exists() and file_sha256(target) == file_sha256(path)):
        if target.exists():
            print(f"{target} changed: ingesting {path} as a new version of that shard", file=sys.stderr)
        staging = target.with_name(f".{target.name}.part")
        shutil.copyfile(path, staging)
        os.replace(staging, target)
    return key, target


def ingest_files(layout: WarehouseLayout, files: list[Path], instance, say, run_config: dict | None = None) -> dict:
    """Register ``files`` as pool_shards partitions and run ``ingest_job`` over them: one range run
    per block of consecutive partitions (its shards read in parallel, put in place in registration
    order, so the first registered shard wins a duplicate); returns the totals, per shard in that order."""
    from mig_assets.definitions import defs
    from mig_assets.defs.pool.assets import raw_pool
    from mig_assets.orchestration.partitions import pool_shards
    from mig_assets.orchestration.run_recovery import wait_for_pool

    keys = [place_in_pool(layout, f)[0] for f in files]
    known = set(instance.get_dynamic_partitions(pool_shards.name))
    new = [k for k in dict.fromkeys(keys) if k not in known]
    if new:
        instance.add_dynamic_partitions(pool_shards.name, new)
    ordered = list(instance.get_dynamic_partitions(pool_shards.name))
    position = {key: i for i, key in enumerate(ordered)}
    totals: dict = {name: 0 for name in TOTALS} | {"shards": []}
    job = defs.resolve_job_def("ingest_job")
    for first, last in contiguous_ranges(ordered, set(keys)):
        wait_for_pool(instance, raw_pool.op.pool, report=say)
        result = job.execute_in_process(
            instance=instance,
            run_config=(run_config or {}) | CLI_LOGGING,
            tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last, "mig/launched_by": "cli"},
        )
        for event in sorted(result.asset_materializations_for_node("raw_pool"), key=lambda m: position[m.partition]):
            metadata = event.metadata
            shard = {
                "shard": event.partition,
                **{name: metadata[name].value for name in TOTALS},
                "run_id": result.run_id,
                "source_file": metadata["source_file"].value,
                "container_errors": metadata["container_errors"].value,
            }
            totals["shards"].append(shard)
            for name in TOTALS:
                totals[name] += shard[name]
            say(f"{progress_bar(len(totals['shards']), len(set(keys)))} {shard['shard']}: {shard['rows_read']:,} rows read, {shard['rows_kept']:,} kept")
    return totals


def progress_bar(done: int, total: int, width: int = 24) -> str:
    filled = width * done // max(total, 1)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def shards_needing(instance, assets_def, shards: list[str], retag: bool) -> tuple[list[str], list[str]]:
    """Of ``shards``, those whose ``assets_def`` output is missing or older than their raw_pool (and,
    with ``retag``, those made by another code version), and those left alone because another
    configuration made them (re-made only with ``retag``)."""
    import dagster as dg

    from mig_assets.orchestration.provenance import code_version_of, latest_materialization

    key = assets_def.key
    current = assets_def.code_versions_by_key.get(key)
    needed, other = [], []
    for shard in shards:
        made = latest_materialization(instance, key, shard)
        ingested = latest_materialization(instance, dg.AssetKey("raw_pool"), shard)
        if ingested is None:
            continue
        if made is not None and code_version_of(made) != current:
            (needed if retag else other).append(shard)
        elif made is None or made.storage_id < ingested.storage_id:
            needed.append(shard)
    return needed, other


def contiguous_ranges(ordered: list[str], chosen: set[str]) -> list[tuple[str, str]]:
    """The runs of consecutive ``chosen`` keys in ``ordered``, as (first, last): one range run each."""
    ranges, start, last = [], None, None
    for key in ordered + [None]:
        if key is not None and key in chosen:
            start, last = start or key, key
        elif start is not None:
            ranges.append((start, last))
            start = None
    return ranges


def run_over_ranges(job, instance, ordered: list[str], needed: list[str], name: str, say, asset_selection=None) -> None:
    """Run ``job`` once per contiguous block of the ``needed`` shards (in registration order ``ordered``),
    as one partition-range run each, so each model or index loads once per block."""
    import time

    for first, last in contiguous_ranges(ordered, set(needed)):
        started = time.perf_counter()
        say(f"{name}: shards {first} .. {last} ({job.name}) ...")
        job.execute_in_process(
            instance=instance,
            run_config=CLI_LOGGING,
            asset_selection=asset_selection,
            tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last, "mig/launched_by": "cli"},
        )
        say(f"{name}: done in {time.perf_counter() - started:.1f}s")
    if not needed:
        say(f"{name}: up to date")


def run_pipeline(layout: WarehouseLayout, instance, say, retag: bool = False) -> dict:
    """Tag, embed and score the shards that need it (``tag_job``, one range run per block of shards:
    each model loads once; the imported backends, which load none, share one run when they need the
    same shards), then the global chain and every selection (``reselect_job``)."""
    import time

    from mig_assets.definitions import (
        atomic_tags,
        defs,
        quality_scores,
        resources,
        sample_embeddings,
    )
    from mig_assets.orchestration.partitions import pool_shards

    ordered = list(instance.get_dynamic_partitions(pool_shards.name))
    if not ordered:
        raise ValueError(f"nothing ingested in {layout.home}: `mig-assets ingest FILE...` first (or drop files in {layout.incoming_dir})")
    job = defs.resolve_job_def("tag_job")
    loads_no_model = {atomic_tags.key: resources["tagger"].backend == "imported", quality_scores.key: resources["scorer"].backend == "imported"}
    runs: list[tuple[list, list[str]]] = []  # the assets of each run of tag_job and the shards they need
    for assets_def in (atomic_tags, sample_embeddings, quality_scores):  # tag_job's assets
        needed, other = shards_needing(instance, assets_def, ordered, retag)
        if other:
            say(
                f"{assets_def.key.to_user_string()}: {len(other)} shard(s) were made by another configuration and are kept; "
                "`mig-assets run --retag` re-makes them with the current settings"
            )
        model_free = loads_no_model.get(assets_def.key, False)
        shared = next((keys for keys, shards in runs if model_free and shards == needed and all(loads_no_model.get(k, False) for k in keys)), None)
        if shared is not None:
            shared.append(assets_def.key)
        else:
            runs.append(([assets_def.key], needed))
    for keys, needed in runs:
        run_over_ranges(job, instance, ordered, needed, " + ".join(k.to_user_string() for k in keys), say, asset_selection=keys)
    started = time.perf_counter()
    say("vocabulary, embeddings, label graph, tree, target and selections (reselect_job) ...")
    result = defs.resolve_job_def("reselect_job").execute_in_process(
        instance=instance,
        run_config=CLI_LOGGING,
        tags={"mig/launched_by": "cli"},
        raise_on_error=False,
    )
    say(f"re-selected in {time.perf_counter() - started:.1f}s (run {result.run_id})")
    nodes = sorted({e.asset_key.to_user_string() for e in result.get_asset_materialization_events()})
    summary = {node: {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items() if k in SUMMARY_KEYS} for node in nodes}
    failures = {e.step_key: root_cause(e.event_specific_data.error) for e in result.all_events if e.is_step_failure}
    for step, reason in failures.items():
        say(f"{step}: FAILED: {reason}")
    if failures:
        raise StepsFailed(f"{len(failures)} step(s) failed (details in the UI, run {result.run_id}); the other assets were made", summary)
    return summary


SUMMARY_KEYS = (
    "dagster/row_count",
    "labels",
    "edges",
    "version",
    "objective",
    "label_coverage",
    "leaves_covered",
    "kl_target_selection",
    "export_dir",
)


def root_cause(error) -> str:
    """The innermost error's message (the asset's own exception, not Dagster's wrapper)."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


class StepsFailed(RuntimeError):
    """Some assets of a run failed; ``summary`` holds what the others made."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary
