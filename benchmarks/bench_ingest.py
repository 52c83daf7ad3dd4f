"""Ingestion benchmark: a generated 1,000,000-record pool in shards, rows/s and peak memory.

    python benchmarks/bench_ingest.py [--records 1000000] [--shards 10]

Each configuration runs in a fresh subprocess so its peak RSS is its own. Memory must stay bounded
by the shard size: ingesting 2 shards and ingesting all of them should peak at about the same RSS.
The baseline, run in the same process as each configuration, is the floor cost of the work: reading
and JSON-parsing the same lines with orjson and nothing else.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache" / "ingest"
TOPICS = ["python", "sql", "algebra", "poetry", "history", "cooking", "physics", "finance", "travel", "biology"]


def generate_pool(folder: Path, n_records: int, n_shards: int, seed: int = 0) -> list[Path]:
    """Shards of mixed formats (ShareGPT, OpenAI, Alpaca JSONL), ~1% bad rows, ~2% duplicates."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f"done-{n_records}-{n_shards}-{seed}"
    paths = [folder / f"shard_{i:03d}.jsonl" for i in range(n_shards)]
    if marker.exists():
        return paths
    rng = random.Random(seed)
    per_shard = n_records // n_shards
    serial = 0
    for path in paths:
        lines = []
        for _ in range(per_shard):
            roll = rng.random()
            if roll < 0.01:
                lines.append('{"conversations": [{"from": "human", "value": "broken')
                continue
            n = serial if roll > 0.03 else rng.randrange(max(serial, 1))  # ~2% repeat an earlier sample
            serial += 1
            topic = TOPICS[n % len(TOPICS)]
            question = f"Question {n} about {topic}: explain step {n % 97} of the method in detail."
            answer = f"Answer {n}: the {topic} method works by repeating step {n % 97} until it converges." * 3
            kind = n % 3
            if kind == 0:
                record = {"id": n, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
            elif kind == 1:
                record = {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
            else:
                record = {"instruction": question, "input": "", "output": answer}
            lines.append(json.dumps(record))
        path.write_text("\n".join(lines) + "\n")
    marker.touch()
    return paths


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_configuration(shard_paths: list[str]) -> dict:
    """Ingest the given shards into a fresh MIG_HOME; called in a subprocess."""
    import orjson

    from mig_assets.core.ingest.shards import ingest_shard
    from mig_assets.core.store.catalog import open_catalog
    from mig_assets.core.store.layout import WarehouseLayout, shard_key_of

    started = time.perf_counter()
    for path in shard_paths:
        with open(path, "rb") as handle:
            for line in handle:
                try:
                    orjson.loads(line)
                except orjson.JSONDecodeError:
                    pass
    baseline_seconds = time.perf_counter() - started
    baseline_rss = peak_rss_mb()

    with tempfile.TemporaryDirectory() as home:
        layout = WarehouseLayout(home).ensure()
        totals = {"rows_read": 0, "rows_kept": 0, "rows_quarantined": 0, "duplicates": 0}
        started = time.perf_counter()
        for path in shard_paths:
            # the generated file is read where it lies (no copy into pool/incoming)
            stats = ingest_shard(layout, shard_key_of(Path(path).name), Path(path), run_id="bench")
            for key in totals:
                totals[key] += getattr(stats, key)
        ingest_seconds = time.perf_counter() - started
        ingest_rss = peak_rss_mb()
        with open_catalog(layout) as con:
            catalog_rows = con.execute("SELECT count(*) FROM samples").fetchone()[0]
        seconds = time.perf_counter() - started
    assert totals["rows_read"] == totals["rows_kept"] + totals["rows_quarantined"] + totals["duplicates"]
    assert catalog_rows == totals["rows_kept"]
    return {
        **totals,
        "shards": len(shard_paths),
        "seconds": round(ingest_seconds, 2),
        "rows_per_second": round(totals["rows_read"] / ingest_seconds),
        "peak_rss_mb": round(ingest_rss),
        "catalog_seconds": round(seconds - ingest_seconds, 2),
        "peak_rss_with_catalog_query_mb": round(peak_rss_mb()),
        "baseline_parse_seconds": round(baseline_seconds, 2),
        "baseline_peak_rss_mb": round(baseline_rss),
        "ratio_vs_baseline": round(ingest_seconds / baseline_seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run_configuration(args.child)))
        return
    started = time.perf_counter()
    paths = generate_pool(CACHE / f"pool_{args.records}_{args.shards}", args.records, args.shards)
    print(f"pool: {args.records:,} records in {args.shards} shards ({time.perf_counter() - started:.1f}s to generate or reuse)")
    results = []
    for subset in (paths[:2], paths):
        done = subprocess.run([sys.executable, __file__, "--child", *map(str, subset)], capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(
            f"{r['shards']:>3} shards, {r['rows_read']:>9,} rows: {r['seconds']:7.1f} s, {r['rows_per_second']:>7,} rows/s, "
            f"peak RSS {r['peak_rss_mb']:>5} MB | baseline orjson parse {r['baseline_parse_seconds']:.1f} s "
            f"(x{r['ratio_vs_baseline']}) | kept {r['rows_kept']:,}, quarantined {r['rows_quarantined']:,}, "
            f"duplicates {r['duplicates']:,} | catalog view query {r['catalog_seconds']} s, "
            f"peak RSS with it {r['peak_rss_with_catalog_query_mb']} MB"
        )
    small, full = results
    print(f"peak RSS, full pool vs 2 shards: x{full['peak_rss_mb'] / small['peak_rss_mb']:.2f} (bounded by shard size when ~1)")


if __name__ == "__main__":
    main()
