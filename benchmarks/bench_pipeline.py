"""The whole pipeline at the paper's scale: raw shard files to an exported MIG subset through the assets,
against the drop-in ``mig-assets sample`` on the same pool, in the same process.

    python benchmarks/bench_pipeline.py [--size small|medium|paper] [--shards 10] [--seed 0] [--mixed-records N]

The pool is ``bench_mig.py``'s (``mig_synthetic.py``: the MIG reference schema with InsTag tags and
Deita scores, cached under benchmarks/.cache/), cut into ``--shards`` JSONL files registered in order.
In a fresh ``MIG_HOME`` (set before the project loads its settings) the benchmark runs what a user
runs: ``mig-assets ingest``'s ingestion, one range run of ``atomic_tags`` and of ``quality_scores``
(the imported backends), then ``tag_vocabulary`` -> ``tag_embeddings`` (the generator's label vectors)
-> ``label_graph`` (its valid-tag file, tau 0.9) -> ``mig_selection`` (a count budget) with its export,
then ``mig_selection`` once more (version 2, as a scheduled re-selection: the diff against version 1
and its members' input changes), and last the knowledge tree and a TAGS selection on the same pool. The pick order of the assets is
checked against the drop-in's.

``--profile N`` runs each phase under cProfile and prints its N functions with the most own time
(the times then include the profiler's overhead). Each phase prints its wall time, its CPU time
(this process and its finished children, the ingestion workers: on a busy machine the figure that
does not depend on the neighbours), its own peak RSS (the kernel's high-water mark, reset before
the phase through /proc/self/clear_refs) and the largest peak of any child process so far (a
forked worker's RSS counts the pages it shares with this process). The ingestion figure for mixed
formats (``bench_ingest.py``'s generator: ShareGPT, OpenAI and Alpaca JSONL with bad rows and
duplicates, ``--mixed-records``) runs in a child process with its own fresh MIG_HOME.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import re
import resource
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


class Phases:
    """Times each phase and keeps its own peak RSS; prints the table at the end."""

    def __init__(self, profile_top: int = 0):
        self.rows: list[tuple[str, float, float, float, float, list[str]]] = []
        self.profile_top = profile_top

    @contextmanager
    def phase(self, name: str, notes: list[str]):
        profiler = cProfile.Profile() if self.profile_top else None
        reset_peak()
        started, cpu = time.perf_counter(), cpu_seconds()
        if profiler:
            profiler.enable()
        yield
        if profiler:
            profiler.disable()
            print(f"\n--- cProfile of {name}: the {self.profile_top} functions with the most own time")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(self.profile_top)
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        self.rows.append((name, seconds, cpu, peak_rss_mib(), children_peak_mib(), notes))  # notes may grow after
        print(f"  {name}: {seconds:.2f} s", flush=True)

    def seconds(self, *names: str) -> float:
        return sum(row[1] for row in self.rows if row[0] in names)

    def cpu(self, *names: str) -> float:
        return sum(row[2] for row in self.rows if row[0] in names)

    def peak(self, *names: str) -> float:
        return max(row[3] for row in self.rows if row[0] in names)

    def print(self) -> None:
        print("\n| phase | time | CPU | peak RSS | children's peak | notes |\n| --- | --- | --- | --- | --- | --- |")
        for name, seconds, cpu, peak, children, notes in self.rows:
            print(f"| {name} | {seconds:.2f} s | {cpu:.2f} s | {peak:,.0f} MiB | {children:,.0f} MiB | {'; '.join(notes)} |")


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


def range_run(job, instance, asset_key, shards: list[str]):
    """One run of ``job`` over all ``shards`` for ``asset_key``, as ``mig-assets run`` launches it."""
    from mig_assets.cli import CLI_LOGGING

    tags = {"dagster/asset_partition_range_start": shards[0], "dagster/asset_partition_range_end": shards[-1]}
    return job.execute_in_process(instance=instance, run_config=CLI_LOGGING, asset_selection=[asset_key], tags=tags)


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


def arrow_tags_floor(layout, shards: list[str]) -> float:
    """Seconds to read the kept samples' annotation column of every shard with Arrow: the floor of the imported tagger."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    started = time.perf_counter()
    for shard in shards:
        table = pq.read_table(layout.shard_file("raw_pool", shard), columns=["sample_id", "imported_tags", "duplicate_of"])
        table.filter(pc.is_null(table.column("duplicate_of")))
    return time.perf_counter() - started


def asset_pick_ids(layout, selection: str) -> list[str]:
    import duckdb

    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        query = "SELECT s.original_id FROM selection_members m JOIN samples s USING (sample_id) WHERE m.selection = ? ORDER BY m.rank"
        return [i for (i,) in con.execute(query, [selection]).fetchall()]


def drop_in_ids(selected: Path) -> list[str]:
    import orjson

    return [orjson.loads(line)["_id"] for line in selected.read_bytes().splitlines()]


def run_mixed_ingest(n_records: int, n_shards: int) -> dict:
    """Child process: ``mig-assets ingest`` of bench_ingest's mixed-format pool in a fresh MIG_HOME."""
    from benchmarks.bench_ingest import CACHE, generate_pool

    files = generate_pool(CACHE / f"pool_{n_records}_{n_shards}", n_records, n_shards)
    with tempfile.TemporaryDirectory() as home:
        os.environ["MIG_HOME"] = home
        from mig_assets.cli import dagster_instance, ingest_files
        from mig_assets.core.store.catalog import WarehouseLayout

        layout = WarehouseLayout(Path(home)).ensure()
        instance = dagster_instance(layout)
        reset_peak()
        started, cpu = time.perf_counter(), cpu_seconds()
        totals = ingest_files(layout, files, instance, say=lambda line: None)
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    return {k: totals[k] for k in ("rows_read", "rows_kept", "rows_quarantined", "duplicates")} | {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_mib": peak_rss_mib(),
        "children_peak_mib": children_peak_mib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixed-records", type=int, help="records of the mixed-format ingestion figure (default by size)")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile each phase, print its top N functions (times grow)")
    parser.add_argument("--mixed-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mixed_child:
        print(json.dumps(run_mixed_ingest(args.mixed_child, args.shards)))
        return
    size = SIZES[args.size]
    directory = ensure_pool(args.size, size, args.seed)
    paths = synthetic_paths(directory)
    phases = Phases(args.profile)

    from mig_assets.core.mig.sample import run_sample

    selected = Path(tempfile.mkdtemp()) / "selected.jsonl"
    with phases.phase("drop-in `sample`", notes := []):
        stats = run_sample(paths.pool, selected, size.picks, valid_tag_path=paths.valid_tags, label_embeddings_prefix=paths.label_embeddings_prefix)
        notes.append(", ".join(f"{k} {v:.1f} s" for k, v in stats["timings_s"].items()))
    expected = drop_in_ids(selected)

    with tempfile.TemporaryDirectory() as home:
        os.environ["MIG_HOME"] = home  # before the project reads its settings: a fresh home
        from mig_assets.cli import dagster_instance, ingest_files
        from mig_assets.core.store.catalog import WarehouseLayout
        from mig_assets.definitions import atomic_tags, defs, quality_scores

        layout = WarehouseLayout(Path(home)).ensure()
        instance = dagster_instance(layout)
        files = split_into_shards(paths.pool, Path(home) / "raw", args.shards)
        with phases.phase("ingest", notes := []):
            totals = ingest_files(layout, files, instance, say=lambda line: None)
        shards = [s["shard"] for s in totals["shards"]]
        notes.append(f"{args.shards} shards, {totals['rows_read'] / phases.rows[-1][1]:,.0f} rows/s")
        tag_job = defs.resolve_job_def("tag_job")
        with phases.phase("atomic_tags (imported)", notes := []):
            run = range_run(tag_job, instance, atomic_tags.key, shards)
        floor = arrow_tags_floor(layout, shards)
        step = step_seconds(instance, run.run_id, "atomic_tags")
        notes.append(f"the step {step:.2f} s, {step / floor:.1f}x the Arrow read of the annotation column ({floor:.2f} s)")
        with phases.phase("quality_scores (imported)", []):
            range_run(tag_job, instance, quality_scores.key, shards)
        run_config = {
            "ops": {
                "tag_embeddings": {"config": {"label_embeddings_prefix": str(paths.label_embeddings_prefix)}},
                "label_graph": {"config": {"tau": 0.9, "valid_tag_path": str(paths.valid_tags)}},
                "mig_selection": {"config": {"budget_count": size.picks, "budget_fraction": None}},
            }
        }
        with phases.phase("vocabulary, vectors, graph, mig_selection + export", notes := []):
            result = materialize(defs, instance, MIG_CHAIN, run_config)
        meta = result.asset_materializations_for_node("mig_selection")[0].metadata
        notes.append(f"selection asset {meta['seconds_total'].value:.1f} s of which select {meta['seconds_select'].value:.1f} s")
        actual = asset_pick_ids(layout, "mig_selection")
        with phases.phase("mig_selection again (version 2: diff, input changes)", []):  # what a scheduled re-selection runs
            materialize(defs, instance, ("mig_selection",), {"ops": {"mig_selection": run_config["ops"]["mig_selection"]}})
        with phases.phase("knowledge_tree, target_profile, tags_5pct", []):
            materialize(defs, instance, TREE_AND_TAGS, {})

    mixed_records = args.mixed_records or MIXED_RECORDS[args.size]
    child = subprocess.run([sys.executable, __file__, "--mixed-child", str(mixed_records), "--shards", str(args.shards)], capture_output=True, text=True)
    if child.returncode:
        sys.exit(f"mixed-format ingestion failed:\n{child.stderr[-3000:]}")
    mixed = json.loads(child.stdout.strip().splitlines()[-1])
    phases.rows.append(
        (
            f"ingest, {mixed_records:,} mixed-format records (child)",
            mixed["seconds"],
            mixed["cpu_seconds"],
            mixed["peak_mib"],
            mixed["children_peak_mib"],
            [
                f"{mixed['rows_read'] / mixed['seconds']:,.0f} rows/s; kept {mixed['rows_kept']:,}, "
                f"quarantined {mixed['rows_quarantined']:,}, duplicates {mixed['duplicates']:,}"
            ],
        )
    )

    print(f"\n{args.size}: {size.records:,} records x {size.labels:,} labels, {size.picks:,} picks, {args.shards} shards")
    phases.print()
    to_export = ("ingest", "atomic_tags (imported)", "quality_scores (imported)", "vocabulary, vectors, graph, mig_selection + export")
    drop_in = phases.seconds("drop-in `sample`")
    total = phases.seconds(*to_export)
    print(f"\nraw files -> exported MIG subset through the assets: {total:.1f} s ({phases.cpu(*to_export):.1f} s CPU), peak {phases.peak(*to_export):,.0f} MiB")
    print(
        f"drop-in `sample`: {drop_in:.1f} s ({phases.cpu('drop-in `sample`'):.1f} s CPU), peak {phases.peak('drop-in `sample`'):,.0f} MiB; ratio assets / drop-in {total / drop_in:.2f}x"
    )
    same = actual == expected
    print(f"pick order, assets vs drop-in: {'identical' if same else 'DIFFERENT'} ({len(actual):,} picks)")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
