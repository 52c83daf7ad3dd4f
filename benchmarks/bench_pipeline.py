"""The whole pipeline at the paper's scale: raw shard files to an exported MIG subset through the assets,
against the drop-in ``mig-assets sample`` on the same pool, in the same benchmark run.

    python benchmarks/bench_pipeline.py [--size small|medium|paper] [--shards 10] [--seed 0] [--mixed-records N] [--one-process] [--repeat N]

The pool is ``bench_mig.py``'s (``mig_synthetic.py``: the MIG reference schema with InsTag tags and
Deita scores, cached under benchmarks/.cache/), cut into ``--shards`` JSONL files registered in order.
In a fresh ``MIG_HOME`` the benchmark runs what a user runs: ``mig-assets ingest``'s ingestion, one
range run of ``atomic_tags`` and ``quality_scores`` (the imported backends: no model, so
``mig-assets run`` runs them together), then
``tag_vocabulary`` -> ``tag_embeddings`` (the generator's label vectors) -> ``label_graph`` (its
valid-tag file, tau 0.9) -> ``mig_selection`` (a count budget) with its export, then
``mig_selection`` once more (version 2, as a scheduled re-selection: the diff against version 1 and
its members' input changes), and last the knowledge tree and a TAGS selection on the same pool. The
pick order of the assets is checked against the drop-in's.

Each of these runs in a child process of its own, as Dagster launches each run (and as
``mig-assets ingest`` is a command of its own): its figures are measured inside that process, from
the start of the run, so a run does not carry the memory an earlier run left behind. So does the
drop-in, as the command runs. ``--one-process`` runs every asset phase in the benchmark's process
instead, one after another, as ``mig-assets run`` runs tagging, scoring and the re-selection: each
phase then starts with what the earlier ones left (the drop-in, a command of its own that
``mig-assets run`` never runs, and the mixed-format ingestion still have a child).

``--profile N`` runs each phase under cProfile and prints its N functions with the most own time
(the times then include the profiler's overhead). Each phase prints its wall time, its CPU time
(its process and that process's finished children, the ingestion workers: on a busy machine the
figure that does not depend on the neighbours), the RSS of its process when the phase starts (the
imports and the Dagster instance), its peak RSS (the kernel's high-water mark, reset at the start
through /proc/self/clear_refs) and the largest peak of a child of its process (a forked worker's
RSS counts the pages it shares with its parent). The ingestion figure for mixed formats
(``bench_ingest.py``'s generator: ShareGPT, OpenAI and Alpaca JSONL with bad rows and duplicates,
``--mixed-records``) has a fresh MIG_HOME of its own.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_mig import SIZES, ensure_pool  # noqa: E402
from benchmarks.mig_synthetic import synthetic_paths  # noqa: E402

MIXED_RECORDS = {"small": 100_000, "medium": 1_000_000, "paper": 1_000_000}
TREE_AND_TAGS = ("knowledge_tree", "target_profile", "tags_5pct")
MIG_CHAIN = ("tag_vocabulary", "tag_embeddings", "label_graph", "mig_selection")


def peak_rss_mib() -> float:
    """This process's resident high-water mark since the last :func:`reset_peak`."""
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the ingestion workers), user + system."""
    return sum(os.times()[:4])


def children_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


@contextmanager
def measured(figures: dict, profile_top: int = 0):
    """Fills ``figures`` with the block's wall and CPU seconds, the RSS at its start, its own peak
    RSS (the kernel's high-water mark, reset at the start through /proc/self/clear_refs) and the
    largest peak of a child process so far; under cProfile, printing its ``profile_top`` functions."""
    profiler = cProfile.Profile() if profile_top else None
    reset_peak()
    start_rss, started, cpu = peak_rss_mib(), time.perf_counter(), cpu_seconds()
    if profiler:
        profiler.enable()
    yield
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(profile_top)
    figures.update(
        seconds=time.perf_counter() - started,
        cpu_seconds=cpu_seconds() - cpu,
        start_mib=start_rss,
        peak_mib=peak_rss_mib(),
        children_peak_mib=children_peak_mib(),
    )


class Phases:
    """Each phase's figures (from :func:`measured`) and notes; prints the table at the end."""

    def __init__(self, profile_top: int = 0):
        self.rows: list[tuple[str, dict, list[str]]] = []
        self.profile_top = profile_top

    @contextmanager
    def phase(self, name: str, notes: list[str]):
        """A phase run in this process."""
        figures: dict = {}
        with measured(figures, self.profile_top):
            yield
        self.add(name, figures, notes)

    def add(self, name: str, figures: dict, notes: list[str]) -> None:
        self.rows.append((name, figures, notes))
        print(f"  {name}: {figures['seconds']:.2f} s", flush=True)

    def seconds(self, *names: str) -> float:
        return sum(figures["seconds"] for name, figures, _ in self.rows if name in names)

    def cpu(self, *names: str) -> float:
        return sum(figures["cpu_seconds"] for name, figures, _ in self.rows if name in names)

    def peak(self, *names: str) -> float:
        return max(figures["peak_mib"] for name, figures, _ in self.rows if name in names)

    def print(self) -> None:
        print("\n| phase | time | CPU | RSS at start | peak RSS | children's peak | notes |\n| --- | --- | --- | --- | --- | --- | --- |")
        for name, f, notes in self.rows:
            print(
                f"| {name} | {f['seconds']:.2f} s | {f['cpu_seconds']:.2f} s | {f['start_mib']:,.0f} MiB | {f['peak_mib']:,.0f} MiB "
                f"| {f['children_peak_mib']:,.0f} MiB | {'; '.join(notes)} |"
            )


def split_into_shards(pool_file: Path, folder: Path, n_shards: int) -> list[Path]:
    """``n_shards`` JSONL files of consecutive lines, named to sort against their order (z_, y_, ...)
    so that only the registration order can give the input order."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = pool_file.read_bytes().splitlines(keepends=True)
    size = -(-len(lines) // n_shards)
    paths = [folder / f"{chr(ord('z') - i)}_part{i}.jsonl" for i in range(n_shards)]
    for i, path in enumerate(paths):
        path.write_bytes(b"".join(lines[i * size : (i + 1) * size]))
    return paths


def range_run(job, instance, asset_keys: list, shards: list[str]):
    """One run of ``job`` over all ``shards`` for ``asset_keys``, as ``mig-assets run`` launches it."""
    from mig_assets.cli import CLI_LOGGING

    tags = {"dagster/asset_partition_range_start": shards[0], "dagster/asset_partition_range_end": shards[-1]}
    return job.execute_in_process(instance=instance, run_config=CLI_LOGGING, asset_selection=asset_keys, tags=tags)


def materialize(defs, instance, names: tuple[str, ...], run_config: dict):
    import dagster as dg

    from mig_assets.cli import CLI_LOGGING

    assets = list(defs.assets)
    chosen = [a for a in assets if a.key.to_user_string() in names]
    run_config = run_config | CLI_LOGGING  # our progress lines, not Dagster's DEBUG event stream
    result = dg.materialize(assets, selection=chosen, instance=instance, resources=defs.resources, run_config=run_config)
    assert result.success
    return result


def step_seconds(instance, run_id: str, step_key: str) -> float:
    """Wall time of one step of a run, from its STEP_START and STEP_SUCCESS events (no run overhead)."""
    stamps = {
        entry.dagster_event.event_type_value: entry.timestamp
        for entry in instance.all_logs(run_id)
        if entry.dagster_event is not None and entry.step_key == step_key
    }
    return stamps["STEP_SUCCESS"] - stamps["STEP_START"]


def arrow_tags_floor(job: dict) -> dict:
    """Seconds to read the kept samples' annotation column of every shard with Arrow (the read the
    imported tagger does, here shard after shard; the tagger reads two at a time): its floor. In a
    process of its own, as the tagger's run: neither finds the other's memory or caches warm."""
    from mig_assets.core.store.catalog import WarehouseLayout
    from mig_assets.core.store.parquet import read_kept_rows

    layout = WarehouseLayout(Path(job["home"]))
    started = time.perf_counter()
    for shard in job["shards"]:
        read_kept_rows(layout.shard_file("raw_pool", shard), ["imported_tags"])
    return {"floor": time.perf_counter() - started}


def asset_pick_ids(layout, selection: str) -> list[str]:
    import duckdb

    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        query = "SELECT s.original_id FROM selection_members m JOIN samples s USING (sample_id) WHERE m.selection = ? ORDER BY m.rank"
        return [i for (i,) in con.execute(query, [selection]).fetchall()]


def drop_in_ids(selected: Path) -> list[str]:
    import orjson

    return [orjson.loads(line)["_id"] for line in selected.read_bytes().splitlines()]


def run_mixed_ingest(n_records: int, n_shards: int, profile_top: int) -> dict:
    """``mig-assets ingest`` of bench_ingest's mixed-format pool in a fresh MIG_HOME."""
    from benchmarks.bench_ingest import CACHE, generate_pool

    files = generate_pool(CACHE / f"pool_{n_records}_{n_shards}", n_records, n_shards)
    with tempfile.TemporaryDirectory() as home:
        os.environ["MIG_HOME"] = home
        from mig_assets.cli import dagster_instance, ingest_files
        from mig_assets.core.store.catalog import WarehouseLayout

        layout = WarehouseLayout(Path(home)).ensure()
        instance = dagster_instance(layout)
        figures: dict = {}
        with measured(figures, profile_top):
            totals = ingest_files(layout, files, instance, say=lambda line: None)
    rate = totals["rows_read"] / figures["seconds"]
    figures["notes"] = [f"{rate:,.0f} rows/s; kept {totals['rows_kept']:,}, quarantined {totals['rows_quarantined']:,}, duplicates {totals['duplicates']:,}"]
    return figures


def run_drop_in(job: dict) -> dict:
    """``mig-assets sample`` on the pool (the baseline), as the command runs it: in a process of its
    own, so that neither a repeat nor the asset phases of ``--one-process`` find the memory it faulted in."""
    from mig_assets.core.mig.sample import run_sample

    size, paths, figures = SIZES[job["size"]], synthetic_paths(Path(job["pool_dir"])), {}
    with measured(figures, job["profile"]):
        stats = run_sample(
            paths.pool, Path(job["selected"]), size.picks, valid_tag_path=paths.valid_tags, label_embeddings_prefix=paths.label_embeddings_prefix
        )
    return figures | {"notes": [", ".join(f"{k} {v:.1f} s" for k, v in stats["timings_s"].items())]}


def run_asset_phase(phase: str, job: dict) -> dict:
    """One phase of the asset path in ``job["home"]``, in this process of its own (as Dagster runs
    each run, and as each ``mig-assets`` command does): its figures, notes and what the parent needs."""
    os.environ["MIG_HOME"] = job["home"]  # before the project reads its settings
    from mig_assets.cli import dagster_instance, ingest_files
    from mig_assets.core.store.catalog import WarehouseLayout
    from mig_assets.definitions import atomic_tags, defs, quality_scores

    layout = WarehouseLayout(Path(job["home"])).ensure()
    instance = dagster_instance(layout)
    tag_job = defs.resolve_job_def("tag_job")
    size, paths = SIZES[job["size"]], synthetic_paths(Path(job["pool_dir"]))
    run_config = {
        "ops": {
            "tag_embeddings": {"config": {"label_embeddings_prefix": str(paths.label_embeddings_prefix)}},
            "label_graph": {"config": {"tau": 0.9, "valid_tag_path": str(paths.valid_tags)}},
            "mig_selection": {"config": {"budget_count": size.picks, "budget_fraction": None}},
        }
    }
    shards, figures, out = job.get("shards", []), {}, {"notes": []}
    with measured(figures, job["profile"]):
        if phase == "ingest":
            totals = ingest_files(layout, [Path(f) for f in job["files"]], instance, say=lambda line: None)
        elif phase == "imported":  # no model: one run for both, as `mig-assets run` launches them
            run = range_run(tag_job, instance, [atomic_tags.key, quality_scores.key], shards)
        elif phase == "mig_chain":
            result = materialize(defs, instance, MIG_CHAIN, run_config)
        elif phase == "reselect":  # what a scheduled re-selection runs
            materialize(defs, instance, ("mig_selection",), {"ops": {"mig_selection": run_config["ops"]["mig_selection"]}})
        elif phase == "tree_and_tags":
            materialize(defs, instance, TREE_AND_TAGS, {})
    if phase == "ingest":
        out["shards"] = [s["shard"] for s in totals["shards"]]
        out["notes"].append(f"{len(out['shards'])} shards, {totals['rows_read'] / figures['seconds']:,.0f} rows/s")
    elif phase == "imported":
        floor = job.get("floor") or arrow_tags_floor(job)["floor"]  # (--one-process: here, after the run)
        step = step_seconds(instance, run.run_id, "atomic_tags")
        work = run.asset_materializations_for_node("atomic_tags")[0].metadata["seconds_shards"].value  # without Dagster's recording
        out["notes"].append(
            f"the atomic_tags step {step:.2f} s, {step / floor:.1f}x the Arrow read of the annotation column ({floor:.2f} s); "
            f"its shards' work {work:.2f} s, {work / floor:.1f}x the read (the rest: Dagster recording {len(shards)} materializations)"
        )
        out["notes"].append(f"the quality_scores step {step_seconds(instance, run.run_id, 'quality_scores'):.2f} s")
    elif phase == "mig_chain":
        meta = result.asset_materializations_for_node("mig_selection")[0].metadata
        out["notes"].append(f"selection asset {meta['seconds_total'].value:.1f} s of which select {meta['seconds_select'].value:.1f} s")
        out["picks"] = asset_pick_ids(layout, "mig_selection")
    return figures | out


def in_child(phase: str, job: dict) -> dict:
    """:func:`run_asset_phase` (or the mixed-format ingestion) in a child process; its printed lines
    (Dagster's log, a profile) pass through, its last line is the result."""
    child = subprocess.run([sys.executable, __file__, "--child", phase, json.dumps(job)], stdout=subprocess.PIPE, text=True)
    if child.returncode:
        sys.exit(f"phase {phase} failed (exit {child.returncode})")
    *printed, last = child.stdout.strip().splitlines()
    if printed:
        print("\n".join(printed))
    return json.loads(last)


ASSET_PHASES = {
    "ingest": "ingest",
    "imported": "atomic_tags + quality_scores (imported), one run",
    "mig_chain": "vocabulary, vectors, graph, mig_selection + export",
    "reselect": "mig_selection again (version 2: diff, input changes)",
    "tree_and_tags": "knowledge_tree, target_profile, tags_5pct",
}
EXPORT_PHASES = ("ingest", "imported", "mig_chain")  # raw files to the exported subset


def run_once(args, directory: Path, export_only: bool) -> Phases:
    """The drop-in, then the asset phases in a fresh MIG_HOME (only those up to the export, with
    ``export_only``); exits if the two pick orders differ."""
    phases = Phases(args.profile)
    drop_in_job = {"size": args.size, "pool_dir": str(directory), "profile": args.profile, "selected": str(Path(tempfile.mkdtemp()) / "selected.jsonl")}
    result = in_child("drop_in", drop_in_job)  # a command of its own, also with --one-process (mig-assets run never runs it)
    phases.add("drop-in `sample`", result, result["notes"])
    expected = drop_in_ids(Path(drop_in_job["selected"]))

    with tempfile.TemporaryDirectory() as home:  # a fresh MIG_HOME
        files = split_into_shards(synthetic_paths(directory).pool, Path(home) / "raw", args.shards)
        job: dict = {"home": home, "size": args.size, "pool_dir": str(directory), "profile": args.profile, "files": [str(f) for f in files]}
        actual: list[str] = []
        for phase, name in ASSET_PHASES.items():
            if export_only and phase not in EXPORT_PHASES:
                continue
            if phase == "imported" and not args.one_process:
                job["floor"] = in_child("arrow_read", job)["floor"]
            result = run_asset_phase(phase, job) if args.one_process else in_child(phase, job)
            job["shards"] = result.get("shards", job.get("shards"))  # ingestion's, in registration order
            actual = result.get("picks", actual)
            phases.add(name, result, result["notes"])
    same = actual == expected
    print(f"pick order, assets vs drop-in: {'identical' if same else 'DIFFERENT'} ({len(actual):,} picks)", flush=True)
    if not same:
        sys.exit(1)
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixed-records", type=int, help="records of the mixed-format ingestion figure (default by size)")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile each phase, print its top N functions (times grow)")
    parser.add_argument(
        "--one-process", action="store_true", help="run every asset phase in this process, one after another (a run carries what the runs before it left)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="the drop-in and the path to the export N times in turn, each in a fresh MIG_HOME: the ratio per repeat and its median",
    )
    parser.add_argument("--child", nargs=2, metavar=("PHASE", "JOB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        phase, job = args.child[0], json.loads(args.child[1])
        if phase == "mixed":
            result = run_mixed_ingest(job["records"], job["shards"], job["profile"])
        else:
            result = {"drop_in": run_drop_in, "arrow_read": arrow_tags_floor}.get(phase, lambda job: run_asset_phase(phase, job))(job)
        print(json.dumps(result))
        return
    size = SIZES[args.size]
    directory = ensure_pool(args.size, size, args.seed)
    pairs: list[tuple[float, float]] = []  # (assets, drop-in) seconds of each repeat
    for repeat in range(1, args.repeat + 1):
        last = repeat == args.repeat
        if args.repeat > 1:
            print(f"repeat {repeat} of {args.repeat}", flush=True)
        phases = run_once(args, directory, export_only=not last)
        to_export = tuple(ASSET_PHASES[p] for p in EXPORT_PHASES)
        pairs.append((phases.seconds(*to_export), phases.seconds("drop-in `sample`")))

    mixed_records = args.mixed_records or MIXED_RECORDS[args.size]
    mixed = in_child("mixed", {"records": mixed_records, "shards": args.shards, "profile": args.profile})
    phases.add(f"ingest, {mixed_records:,} mixed-format records (child)", mixed, mixed["notes"])

    print(f"\n{args.size}: {size.records:,} records x {size.labels:,} labels, {size.picks:,} picks, {args.shards} shards")
    phases.print()
    total, drop_in = pairs[-1]
    print(f"\nraw files -> exported MIG subset through the assets: {total:.1f} s ({phases.cpu(*to_export):.1f} s CPU), peak {phases.peak(*to_export):,.0f} MiB")
    print(
        f"drop-in `sample`: {drop_in:.1f} s ({phases.cpu('drop-in `sample`'):.1f} s CPU), peak {phases.peak('drop-in `sample`'):,.0f} MiB; ratio assets / drop-in {total / drop_in:.2f}x"
    )
    if len(pairs) > 1:
        ratios = sorted(assets / dropped for assets, dropped in pairs)
        print(
            f"over {len(pairs)} repeats, each the drop-in then the assets: assets {min(a for a, _ in pairs):.1f}-{max(a for a, _ in pairs):.1f} s, "
            f"drop-in {min(d for _, d in pairs):.1f}-{max(d for _, d in pairs):.1f} s; ratio per repeat {', '.join(f'{r:.2f}x' for r in ratios)}, "
            f"median {statistics.median(ratios):.2f}x"
        )


if __name__ == "__main__":
    main()
