"""Reclaim the concurrency-pool slots of runs whose process is gone, and wait for a pool visibly.

A run killed with ``kill -9`` (or by the OOM killer) never frees the slot it claimed in the
``duckdb`` pool (limit 1), so every later ingestion waits for it forever. Dagster's run monitoring
cannot see this with the default run launcher (it has no worker health check), and
``free_slots_after_run_end_seconds`` only frees the slots of runs already marked finished.

Rule: a run that holds or waits for a slot is *dead* when the process that executes its steps
(the ``pid`` of its latest engine event, e.g. "Executing steps in process (pid: N)") no longer
exists, is a zombie, or was started after the run (a recycled pid). A dead run is marked failed
and its slots are freed; a finished run still holding slots has them freed. The instance is the
local one under ``MIG_HOME`` (SQLite storage, runs on this host), so pids are meaningful.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Callable

import psutil
from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus

FINISHED_STATUSES = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
# a run's own process exists before the run starts; one created this long after it reuses a dead owner's pid
PID_START_SLACK_SECONDS = 120.0


@dataclass(frozen=True)
class SlotHolder:
    run_id: str
    pool: str
    run: DagsterRun | None  # None once the run was deleted
    pid: int | None
    started_at: float | None  # run start, epoch seconds

    @property
    def status(self) -> str:
        return self.run.status.value.lower() if self.run else "deleted"


def run_owner_pid(instance: DagsterInstance, run_id: str) -> int | None:
    """The pid of the process that last reported executing ``run_id`` (None when none did)."""
    pid = None
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        metadata = entry.dagster_event.engine_event_data.metadata if entry.dagster_event else {}
        if "pid" in metadata:
            pid = int(metadata["pid"].value)
    return pid


def process_alive(pid: int, started_before: float | None) -> bool:
    """Whether ``pid`` runs, is not a zombie, and is not a newer process that reused the pid."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started_before is None or process.create_time() <= started_before + PID_START_SLACK_SECONDS
    except psutil.NoSuchProcess:
        return False


def slot_holders(instance: DagsterInstance, pools: list[str] | None = None) -> list[SlotHolder]:
    """Runs holding a slot of ``pools`` (all pools with a limit by default), or waiting for one."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    names = pools if pools is not None else [pool.name for pool in storage.get_pool_limits()]
    holders = []
    for name, info in storage.get_concurrency_infos(names).items():
        # a freed slot is first assigned to the oldest pending step: a dead waiter would keep it
        run_ids = [slot.run_id for slot in info.claimed_slots] + [step.run_id for step in info.pending_steps]
        for run_id in dict.fromkeys(run_ids):
            record = instance.get_run_record_by_id(run_id)
            holders.append(
                SlotHolder(
                    run_id=run_id,
                    pool=name,
                    run=record.dagster_run if record else None,
                    pid=run_owner_pid(instance, run_id) if record else None,
                    started_at=record.start_time if record else None,
                )
            )
    return holders


def reclaim_dead_runs(instance: DagsterInstance) -> list[str]:
    """Free the slots of finished or dead runs (dead ones are marked failed); one line per run freed."""
    freed = []
    for holder in {h.run_id: h for h in slot_holders(instance)}.values():
        if holder.run is not None and holder.run.status not in FINISHED_STATUSES:
            if holder.pid is None or process_alive(holder.pid, holder.started_at):
                continue
            instance.report_run_failed(
                holder.run,
                message=f"its process (pid {holder.pid}) is gone; marked failed and its pool slots freed by mig-assets",
            )
            reason = f"its process (pid {holder.pid}) is gone: marked failed"
        else:
            reason = f"it is {holder.status}"
        instance.event_log_storage.free_concurrency_slots_for_run(holder.run_id)
        freed.append(f"released the `{holder.pool}` pool slot (or claim) of run {holder.run_id}: {reason}")
    return freed


def wait_for_pool(
    instance: DagsterInstance,
    pool: str,
    *,
    report: Callable[[str], None],
    poll_seconds: float = 1.0,
    report_every_seconds: float = 30.0,
) -> None:
    """Block until ``pool`` has a free slot, reclaiming dead runs' slots on the way.

    Says what it waits for (the holding runs, their pid and start) and since when, at the start and
    every ``report_every_seconds``. Interrupting it (Ctrl-C) raises KeyboardInterrupt as usual.
    """
    storage = instance.event_log_storage
    since = time.time()
    last_report = None
    while True:
        for line in reclaim_dead_runs(instance):
            report(line)
        info = storage.get_concurrency_info(pool) if storage.supports_global_concurrency_limits else None
        if info is None or info.limit is None or len(_slot_owners(info)) < info.limit:
            return
        if last_report is None or time.time() - last_report >= report_every_seconds:
            owners = _slot_owners(info)
            holders = ", ".join(
                f"run {h.run_id} ({h.status}, pid {h.pid}, since {_utc(h.started_at)})" for h in slot_holders(instance, [pool]) if h.run_id in owners
            )
            report(f"waiting since {_utc(since)} for a slot of the `{pool}` pool (limit {info.limit}), held by {holders}; Ctrl-C stops")
            last_report = time.time()
        time.sleep(poll_seconds)


def _slot_owners(info) -> set[str]:
    """Runs that hold a slot of the pool: claimed, or assigned to one of their pending steps."""
    return {slot.run_id for slot in info.claimed_slots} | {step.run_id for step in info.pending_steps if step.assigned_timestamp is not None}


def _utc(timestamp: float | None) -> str:
    if timestamp is None:
        return "?"
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
