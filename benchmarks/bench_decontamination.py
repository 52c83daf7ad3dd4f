"""Decontamination evidence: speed and memory at scale, false positives, and the real-data run.

    python benchmarks/bench_decontamination.py [--pool 1000000] [--shards 10] [--items 5000] [--skip-scale] [--embedding]

1. Scale: ``--pool`` generated samples in ``--shards`` raw_pool-shaped Parquet files against
   ``--items`` benchmark items (every real benchmark prompt of ../shared/data/real, topped up with
   generated ones), through the project's code (``BenchmarkIndex``, ``check_raw_pool_file``), one
   shard at a time, as the asset does. Each configuration runs in a fresh subprocess so its peak RSS
   is its own: all shards against two shards shows memory bounded by the shard. The baseline, in
   the same process, is the floor of the work: reading the shards' Parquet and normalizing their
   words (no hashing, no matching). 1,000 planted copies (exact, noisy, inside a longer prompt)
   must all be found.
2. False positives: AlpacaEval's 805 prompts (none of which is an MT-Bench question) against MT-Bench.
3. Real data: a pool of the AlpacaEval, self-instruct and Arena-Hard v0.1 files against MT-Bench and
   Arena-Hard v2.0: what is flagged, with examples.
4. ``--embedding``: the same two measures for the embedding method (real MiniLM encoder), by threshold.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mig_assets.core.curation.decontamination import (  # noqa: E402
    BenchmarkIndex,
    BenchmarkItem,
    DecontaminationConfig,
    messages_array,
    normalized_words,
    read_benchmark,
)
from mig_assets.core.curation.shard_check import check_raw_pool_file, check_raw_pool_table  # noqa: E402
from mig_assets.core.ingest.records import sample_id  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
BENCHMARK_FILES = ["mt_bench_questions.jsonl", "arena_hard_v0.1_questions.jsonl", "arena_hard_v2.0_questions.jsonl"]
POOL_FILES = [
    "alpaca_eval_outputs.json",
    "alpaca_eval_outputs_gpt4_1106_preview.json",
    "alpaca_eval_outputs_Qwen1.5-7B-Chat.json",
    "alpaca_eval_outputs_llama-2-7b-chat-hf.json",
    "self_instruct_seed_tasks.jsonl",
    "self_instruct_user_oriented.jsonl",
    "arena_hard_v0.1_questions.jsonl",
]
PLANTED = 1000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def user_text(item: BenchmarkItem) -> str:
    return "\n\n".join(c for r, c in item.messages if r == "user")


def real_items() -> list[BenchmarkItem]:
    files = BENCHMARK_FILES + ["alpaca_eval_outputs.json", "self_instruct_seed_tasks.jsonl", "self_instruct_user_oriented.jsonl"]
    return [item for name in files for item in read_benchmark(REAL / name)]


def generated_items(words: list[str], n: int, rng: np.random.Generator) -> list[BenchmarkItem]:
    lengths = rng.integers(12, 60, n)
    return [BenchmarkItem("generated", i + 1, (("user", " ".join(words[j] for j in rng.integers(0, len(words), k))),)) for i, k in enumerate(lengths)]


def plain_words(items: list[BenchmarkItem]) -> list[str]:
    """The benchmark's plain words (ASCII letters, at most 12): the generator's vocabulary."""
    return sorted({w for item in items for w in user_text(item).lower().split() if w.isascii() and w.isalpha() and len(w) <= 12})


def planted_text(item: BenchmarkItem, kind: int) -> str:
    question = user_text(item)
    return question if kind == 0 else question.upper().replace(" ", "  ") + " !!" if kind == 1 else f"Hello there. {question} Thanks!"


def write_pool(folder: Path, n_pool: int, n_shards: int, items: list[BenchmarkItem], words: list[str], seed: int) -> list[str]:
    """Shards of generated prompts (10-80 plain words each) with PLANTED copies of benchmark items
    (exact, noisy, inside a longer prompt, in turn), whose sample ids start with ``planted-``."""
    rng = np.random.default_rng(seed)
    per_shard = n_pool // n_shards
    planted_rows = set(rng.choice(n_pool, PLANTED, replace=False).tolist())
    paths = []
    for shard in range(n_shards):
        lengths = rng.integers(10, 80, per_shard)
        flat = rng.integers(0, len(words), int(lengths.sum())).tolist()
        ends = np.cumsum(lengths).tolist()
        texts, ids = [], []
        for row, (end, k) in enumerate(zip(ends, lengths.tolist())):
            global_row = shard * per_shard + row
            if global_row in planted_rows:
                texts.append(planted_text(items[global_row % len(items)], global_row % 3))
                ids.append(f"planted-{global_row:07d}")
            else:
                texts.append(" ".join(words[j] for j in flat[end - k : end]))
                ids.append(f"generated-{global_row:07d}")
        messages = pa.array([[{"role": "user", "content": t}] for t in texts], messages_array([]).type)
        path = folder / f"shard-{shard:02d}.parquet"
        pq.write_table(pa.table({"sample_id": ids, "messages": messages}), path, compression="zstd")
        paths.append(str(path))
    return paths


def child(paths: list[str], items_file: str) -> dict:
    """One configuration in this process: the baseline, then the check, shard by shard."""
    items = [BenchmarkItem(f, line, tuple(map(tuple, messages))) for f, line, messages in json.loads(Path(items_file).read_text())]
    started = time.perf_counter()
    for path in paths:
        table = pq.read_table(path, columns=["sample_id", "messages"])
        normalized_words(table.column("messages"))
    baseline = time.perf_counter() - started
    baseline_rss = peak_rss_mb()
    started = time.perf_counter()
    index = BenchmarkIndex(items)
    indexed = time.perf_counter() - started
    config = DecontaminationConfig(benchmarks=())
    flagged, checked = set(), 0
    started = time.perf_counter()
    for path in paths:
        rows, n = check_raw_pool_file(index, path, config)
        flagged |= set(rows.column("sample_id").to_pylist())
        checked += n
    seconds = time.perf_counter() - started
    return {
        "shards": len(paths),
        "samples": checked,
        "flagged": len(flagged),
        "planted_found": sum(sid.startswith("planted-") for sid in flagged),
        "planted": sum(sid.startswith("planted-") for p in paths for sid in pq.read_table(p, columns=["sample_id"]).column("sample_id").to_pylist()),
        "index_seconds": round(indexed, 2),
        "check_seconds": round(seconds, 2),
        "baseline_seconds": round(baseline, 2),
        "ratio_vs_baseline": round((seconds + indexed) / baseline, 2),
        "peak_rss_mb": round(peak_rss_mb()),
        "baseline_peak_rss_mb": round(baseline_rss),
        "samples_per_second": round(checked / seconds),
    }


def generate(folder: str, args) -> None:
    """Write the benchmark items and the pool (in its own process: the checks' peak RSS must not include it)."""
    rng = np.random.default_rng(args.seed)
    items = real_items()
    words = plain_words(items)
    items += generated_items(words, max(args.items - len(items), 0), rng)
    (Path(folder) / "items.json").write_text(json.dumps([[i.file, i.line, i.messages] for i in items]))
    paths = write_pool(Path(folder), args.pool, args.shards, items, words, args.seed + 1)  # not the items' random stream
    print(json.dumps({"items": len(items), "words": len(words), "paths": paths}))


def scale(args) -> None:
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        command = [sys.executable, __file__, "--generate", folder, "--pool", str(args.pool), "--shards", str(args.shards), "--items", str(args.items)]
        written = json.loads(subprocess.run([*command, "--seed", str(args.seed)], capture_output=True, text=True, check=True).stdout)
        paths = written["paths"]
        print(
            f"== scale: {args.pool:,} generated samples in {args.shards} shards vs {written['items']:,} benchmark items "
            f"({PLANTED} planted copies; written in {time.perf_counter() - started:.1f}s)"
        )
        results = []
        for subset in (paths[:2], paths):
            done = subprocess.run([sys.executable, __file__, "--child", str(Path(folder) / "items.json"), *subset], capture_output=True, text=True, check=True)
            results.append(json.loads(done.stdout))
    for r in results:
        print(
            f"   {r['shards']:>2} shard(s), {r['samples']:>9,} samples: check {r['check_seconds']:.1f}s + index {r['index_seconds']:.1f}s "
            f"({r['samples_per_second']:,}/s) | baseline read+normalize {r['baseline_seconds']:.1f}s (x{r['ratio_vs_baseline']}) | "
            f"peak RSS {r['peak_rss_mb']} MB (baseline {r['baseline_peak_rss_mb']} MB) | flagged {r['flagged']:,}, "
            f"planted found {r['planted_found']}/{r['planted']}"
        )
    small, full = results
    print(f"   peak RSS, all shards vs 2 shards: x{full['peak_rss_mb'] / small['peak_rss_mb']:.2f} (bounded by the shard when ~1)")
    print(f"   generated (clean) samples flagged: {full['flagged'] - full['planted_found']}")


def pool_table(files: list[str]) -> tuple[pa.Table, dict[str, str]]:
    """A pool of the records of ``files`` (raw_pool columns), one row per distinct sample, and each sample's origin."""
    rows, origin = {}, {}
    for name in files:
        for item in read_benchmark(REAL / name):
            sid = sample_id(list(item.messages))
            rows.setdefault(sid, item.messages)
            origin.setdefault(sid, f"{name}:{item.line}")
    return pa.table({"sample_id": list(rows), "messages": messages_array(list(rows.values()))}), origin


def false_positives() -> None:
    index = BenchmarkIndex(read_benchmark(REAL / "mt_bench_questions.jsonl"))
    table, origin = pool_table(["alpaca_eval_outputs.json"])
    rows, checked = check_raw_pool_table(index, table, DecontaminationConfig(benchmarks=()))
    flagged = sorted(set(rows.column("sample_id").to_pylist()))
    print(f"== false positives: AlpacaEval ({checked} prompts) vs MT-Bench (80): {len(flagged)} flagged = {len(flagged) / checked:.2%}")
    for row in rows.to_pylist()[:5]:
        print(f"   {origin[row['sample_id']]} ~ MT-Bench line {row['benchmark_line']} ({row['method']}, {row['score']:.2f})")


def real_run() -> None:
    benchmarks = ["mt_bench_questions.jsonl", "arena_hard_v2.0_questions.jsonl"]
    index = BenchmarkIndex([item for name in benchmarks for item in read_benchmark(REAL / name)])
    table, origin = pool_table(POOL_FILES)
    started = time.perf_counter()
    rows, checked = check_raw_pool_table(index, table, DecontaminationConfig(benchmarks=()))
    seconds = time.perf_counter() - started
    text_of = {item.file + str(item.line): user_text(item) for item in index.items}
    pool_text = dict(
        zip(
            table.column("sample_id").to_pylist(),
            (user_text(BenchmarkItem("", 0, tuple((m["role"], m["content"]) for m in ms))) for ms in table.column("messages").to_pylist()),
        )
    )
    flagged = sorted(set(rows.column("sample_id").to_pylist()))
    print(
        f"== real data: pool of {len(POOL_FILES)} files ({checked:,} distinct samples) vs MT-Bench + Arena-Hard v2.0 ({len(index.items)} items) in {seconds:.2f}s"
    )
    per = {}
    for row in rows.to_pylist():
        key = (Path(row["benchmark_file"]).name, row["method"])
        per.setdefault(key, set()).add(row["sample_id"])
    for (file, method), ids in sorted(per.items()):
        print(f"   {file:<34} {method:<6} {len(ids):>4} samples")
    by_origin = {}
    for sid in flagged:
        by_origin.setdefault(origin[sid].split(":")[0], 0)
        by_origin[origin[sid].split(":")[0]] += 1
    print(f"   {len(flagged)} distinct samples flagged, by pool file: {json.dumps(by_origin)}")
    shown = set()
    for row in sorted(rows.to_pylist(), key=lambda r: -r["score"]):
        if row["sample_id"] in shown or len(shown) >= 6:
            continue
        shown.add(row["sample_id"])
        sample = pool_text[row["sample_id"]].replace("\n", " ")[:110]
        item = text_of[row["benchmark_file"] + str(row["benchmark_line"])].replace("\n", " ")[:110]
        print(
            f"   - {origin[row['sample_id']]} [{row['method']} {row['score']:.2f}] {sample!r}\n     ~ {Path(row['benchmark_file']).name}:{row['benchmark_line']} {item!r}"
        )


def embedding_measures() -> None:
    from mig_assets.core.embedding.encoder import SentenceEmbedder

    model = SentenceEmbedder(device="cpu")
    index = BenchmarkIndex(read_benchmark(REAL / "mt_bench_questions.jsonl"))
    from mig_assets.core.curation.decontamination import embedding_matches

    units, _ = index.embedding_units()
    unit_vectors = model.encode(units)
    table, _ = pool_table(["alpaca_eval_outputs.json"])
    texts = [user_text(BenchmarkItem("", 0, tuple((m["role"], m["content"]) for m in ms))) for ms in table.column("messages").to_pylist()]
    vectors = model.encode(texts)
    ids = table.column("sample_id").to_pylist()
    print("== embedding method: AlpacaEval vs MT-Bench, prompts flagged by threshold (text methods flag 2: exact copies)")
    for threshold in (0.7, 0.8, 0.85, 0.9, 0.95):
        flagged = set(embedding_matches(index, ids, vectors, unit_vectors, threshold).column("sample_id").to_pylist())
        print(f"   cosine >= {threshold:.2f}: {len(flagged)} = {len(flagged) / len(ids):.2%}")
    paraphrases = [
        "Write an engaging travel blog entry about a recent journey to Hawaii, covering cultural experiences and attractions you must see.",
        "Act as if you were Elon Musk for the rest of this chat and talk the way he does. Why should humans travel to Mars?",
        "Write a program that finds the elements two arrays have in common, without extra data structures.",
    ]
    found = embedding_matches(index, [f"p{i}" for i in range(len(paraphrases))], model.encode(paraphrases), unit_vectors, 0.0).to_pylist()
    for i, text in enumerate(paraphrases):
        best = max((r for r in found if r["sample_id"] == f"p{i}"), key=lambda r: r["score"])
        print(f"   paraphrase {text[:70]!r}...: best MT-Bench line {best['benchmark_line']}, cosine {best['score']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--embedding", action="store_true", help="also measure the embedding method (loads the MiniLM encoder)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--generate", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.generate, args)
        return
    if args.child:
        print(json.dumps(child(args.child[1:], args.child[0])))
        return
    if not args.skip_scale:
        scale(args)
    false_positives()
    real_run()
    if args.embedding:
        embedding_measures()


if __name__ == "__main__":
    main()
