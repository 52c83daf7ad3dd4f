"""Near-duplicate benchmark: MinHash recall and precision against exact Jaccard, lexical and
semantic throughput with peak memory.

    python benchmarks/bench_near_duplicates.py [--recall 20000] [--lexical 1000000] [--semantic 1000000] [--shard 100000]

Each part runs in a fresh subprocess, so its peak RSS is its own; a size of 0 skips the part.

- recall: generated prompts (Zipf vocabulary, 20-80 words) with planted copies edited at rates that
  spread their Jaccard over [0.5, 1]; every pair's exact Jaccard of the word 3-gram sets (a sparse
  incidence product) against the pairs MinHash LSH reports at the threshold. Baseline in the same
  process: signatures with datasketch's ``MinHash.bulk`` on the same texts (the library not chosen).
- lexical: N generated prompts with 1% planted copies (up to 2% of words replaced), signed shard by shard (as the asset does),
  then one LSH index over all and every row looked up. Baseline: shingling alone (the floor cost).
- semantic: N x 384 generated unit vectors (clustered, 0.5% planted near copies), faiss IVF range
  search of every row. Baseline: exact (flat) search of 2,000 queries against all N, scaled to N.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from mig_assets.core.curation.near_duplicates import (
    EmbeddingParams,
    MinHashParams,
    embedding_pairs,
    minhash_pairs,
    minhash_signatures,
    shingles,
)

VOCABULARY = 30_000


def generated_prompts(n: int, planted: float, max_edit: float, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``n`` prompts; a ``planted`` share are copies of earlier ones with a share of words replaced
    (uniform in [0, max_edit]). Returns the texts and, per planted copy, (source row, copy row)."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(VOCABULARY)])
    ranks = np.minimum(rng.zipf(1.3, size=n * 80) - 1, VOCABULARY - 1)
    lengths = rng.integers(20, 81, size=n)
    offsets = np.r_[0, np.cumsum(lengths)]
    texts = [" ".join(words[ranks[offsets[i] : offsets[i + 1]]]) for i in range(n)]
    copies = np.sort(rng.choice(np.arange(1, n), size=int(n * planted), replace=False))
    pairs = []
    for copy in copies.tolist():
        source = int(rng.integers(copy))
        tokens = texts[source].split()
        edits = rng.random(len(tokens)) < rng.uniform(0, max_edit)
        tokens = [str(words[rng.integers(VOCABULARY)]) if e else t for t, e in zip(tokens, edits)]
        texts[copy] = " ".join(tokens)
        pairs.append((source, copy))
    return texts, np.array(pairs)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def exact_jaccard_pairs(texts: list[str], size: int, threshold: float) -> set[tuple[int, int]]:
    """Every pair whose word ``size``-gram sets have Jaccard >= threshold (sparse incidence product)."""
    from scipy.sparse import csr_array, triu

    vocabulary: dict[str, int] = {}
    rows, cols = [], []
    for row, text in enumerate(texts):
        for shingle in shingles(text, size):
            rows.append(row)
            cols.append(vocabulary.setdefault(shingle, len(vocabulary)))
    incidence = csr_array((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(texts), len(vocabulary)))
    sizes = np.asarray(incidence.sum(axis=1)).ravel()
    overlap = triu(incidence @ incidence.T, k=1).tocoo()
    jaccard = overlap.data / (sizes[overlap.row] + sizes[overlap.col] - overlap.data)
    keep = jaccard >= threshold
    return set(zip(overlap.row[keep].tolist(), overlap.col[keep].tolist()))


def part_recall(n: int) -> dict:
    params = MinHashParams()
    texts, planted = generated_prompts(n, planted=0.05, max_edit=0.2)
    started = time.perf_counter()
    signatures, has_words = minhash_signatures(texts, params)
    rensa_seconds = time.perf_counter() - started
    left, right, _ = minhash_pairs(signatures, has_words, np.arange(n), params)
    found = set(zip(left.tolist(), right.tolist()))
    truth = exact_jaccard_pairs(texts, params.shingle_size, params.threshold)
    near_truth = exact_jaccard_pairs(texts, params.shingle_size, params.threshold + 0.05)
    from datasketch import MinHash

    started = time.perf_counter()
    MinHash.bulk([[s.encode() for s in shingles(t, params.shingle_size)] for t in texts], num_perm=params.num_perm, seed=params.seed)
    datasketch_seconds = time.perf_counter() - started
    hits = len(found & truth)
    return {
        "part": "recall",
        "samples": n,
        "planted_copies": len(planted),
        "threshold": params.threshold,
        "pairs_exact_jaccard_at_threshold": len(truth),
        "pairs_reported": len(found),
        "recall": round(hits / len(truth), 4) if truth else None,
        "precision": round(hits / len(found), 4) if found else None,
        "recall_at_threshold_plus_0.05": round(len(found & near_truth) / len(near_truth), 4) if near_truth else None,
        "signatures_seconds_rensa": round(rensa_seconds, 3),
        "signatures_seconds_datasketch_bulk": round(datasketch_seconds, 3),
        "ratio_datasketch_over_rensa": round(datasketch_seconds / rensa_seconds, 1),
        "peak_rss_mib": round(peak_rss_mib()),
    }


def part_lexical(n: int, shard: int) -> dict:
    params = MinHashParams()
    started = time.perf_counter()
    texts, planted = generated_prompts(n, planted=0.01, max_edit=0.02)
    generate_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for start in range(0, n, shard):
        [shingles(t, params.shingle_size) for t in texts[start : start + shard]]
    shingle_seconds = time.perf_counter() - started
    started = time.perf_counter()
    parts = [minhash_signatures(texts[start : start + shard], params) for start in range(0, n, shard)]
    signatures, has_words = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    sign_seconds = time.perf_counter() - started
    del texts, parts
    started = time.perf_counter()
    left, right, _ = minhash_pairs(signatures, has_words, np.arange(n), params)
    pairs_seconds = time.perf_counter() - started
    found = set(zip(left.tolist(), right.tolist()))
    return {
        "part": "lexical",
        "samples": n,
        "generate_seconds": round(generate_seconds, 1),
        "signatures_seconds": round(sign_seconds, 1),
        "lsh_build_and_query_seconds": round(pairs_seconds, 1),
        "total_seconds": round(sign_seconds + pairs_seconds, 1),
        "baseline_shingling_seconds": round(shingle_seconds, 1),
        "ratio_total_over_shingling": round((sign_seconds + pairs_seconds) / shingle_seconds, 2),
        "pairs": len(found),
        "planted_found": round(sum((int(a), int(b)) in found for a, b in planted) / len(planted), 4),
        "peak_rss_mib": round(peak_rss_mib()),
    }


def part_semantic(n: int) -> dict:
    import faiss

    rng = np.random.default_rng(0)
    dimension = 384
    started = time.perf_counter()
    centres = rng.standard_normal((2000, dimension), dtype=np.float32)
    vectors = np.empty((n, dimension), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        block = centres[rng.integers(0, len(centres), stop - start)] + rng.standard_normal((stop - start, dimension), dtype=np.float32)
        vectors[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    copies = rng.choice(n, size=n // 200, replace=False)
    sources = rng.integers(0, n, size=len(copies))
    near = vectors[sources] + 0.005 * rng.standard_normal((len(copies), dimension), dtype=np.float32)
    vectors[copies] = near / np.linalg.norm(near, axis=1, keepdims=True)
    generate_seconds = time.perf_counter() - started
    params = EmbeddingParams()
    started = time.perf_counter()
    left, right, _ = embedding_pairs(vectors, np.arange(n), params)
    seconds = time.perf_counter() - started
    found = set(zip(left.tolist(), right.tolist()))
    planted = {(min(a, b), max(a, b)) for a, b in zip(sources.tolist(), copies.tolist()) if a != b}
    flat = faiss.IndexFlatIP(dimension)
    flat.add(vectors)
    sample = 2000
    started = time.perf_counter()
    flat.range_search(vectors[:sample], params.threshold)
    exact_seconds = (time.perf_counter() - started) * n / sample
    return {
        "part": "semantic",
        "samples": n,
        "dimension": dimension,
        "generate_seconds": round(generate_seconds, 1),
        "index_and_range_search_seconds": round(seconds, 1),
        "baseline_exact_search_seconds_scaled": round(exact_seconds, 1),
        "ratio_exact_over_ivf": round(exact_seconds / seconds, 1),
        "pairs": len(found),
        "planted_found": round(len(found & planted) / len(planted), 4),
        "peak_rss_mib": round(peak_rss_mib()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recall", type=int, default=20_000)
    parser.add_argument("--lexical", type=int, default=1_000_000)
    parser.add_argument("--semantic", type=int, default=1_000_000)
    parser.add_argument("--shard", type=int, default=100_000, help="samples signed at a time (one shard)")
    parser.add_argument("--part", choices=["recall", "lexical", "semantic"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        result = {
            "recall": lambda: part_recall(args.size),
            "lexical": lambda: part_lexical(args.size, args.shard),
            "semantic": lambda: part_semantic(args.size),
        }
        print(json.dumps(result[args.part]()), flush=True)
        return
    for part, size in (("recall", args.recall), ("lexical", args.lexical), ("semantic", args.semantic)):
        if size:
            command = [sys.executable, __file__, "--part", part, "--size", str(size), "--shard", str(args.shard)]
            started = time.perf_counter()
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            print(json.dumps({**json.loads(out), "wall_seconds": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
