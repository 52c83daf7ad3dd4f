"""Real-data evidence: every method at 10% on ../shared/data/real/, aligned to MT-Bench coding + math.

    python benchmarks/real_data_evidence.py [--home DIR] [--fraction 0.1] [--scorer logprob|imported]

Ingests the AlpacaEval, Arena-Hard and self-instruct files, tags them with SmolLM2-135M on vLLM
(CPU here), scores quality with Deita's logprob scorer on the same model, builds the graph, tree
and target profile, runs every selection, then prints the comparison table. Everything is cached
in DIR (default ./evidence_home): a second run re-tags and re-scores nothing. On 2 busy cores the
first run takes about 40 minutes (tagging ~2.5 samples/s, scoring ~1-5 units/s).
"""

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
POOL_EXCLUDED = ("mt_bench_questions.jsonl", "xsample_example.jsonl")  # the target, and a MIG-format sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("evidence_home"))
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--scorer", choices=["logprob", "imported"], default="logprob")
    args = parser.parse_args()
    home = args.home.resolve()
    # read when the definitions load: they decide the tagger's and scorer's code versions
    os.environ.update(
        {
            "MIG_HOME": str(home),
            "MIG_TAGGER_BACKEND": "vllm",
            "MIG_SCORER_BACKEND": args.scorer,
            "MIG_TARGET_PATH": str(REAL / "mt_bench_questions.jsonl"),
            "MIG_TARGET_FILTER": "category=coding,math",
        }
    )
    sys.path.insert(0, str(REPO))
    from mig_assets.cli import main as cli_main
    from mig_assets.cli import (
        materialize_all,
        stdout_to_stderr,
    )
    from mig_assets.core.store.layout import WarehouseLayout
    from mig_assets.launch import dagster_instance, ingest_files

    layout = WarehouseLayout(home).ensure()
    instance = dagster_instance(layout)
    started = time.perf_counter()
    files = sorted(p for p in REAL.glob("*.json*") if p.name not in POOL_EXCLUDED)
    with stdout_to_stderr():  # vLLM logs to stdout: keep it for the table
        totals = ingest_files(layout, files, instance)
        print(f"ingested {totals['rows_read']:,} rows, kept {totals['rows_kept']:,} ({time.perf_counter() - started:.0f}s)", file=sys.stderr)
        materialize_all(layout, instance, [s["shard"] for s in totals["shards"]])
    print(f"tagged, scored, selected ({time.perf_counter() - started:.0f}s)", file=sys.stderr)
    cli_main(["compare", "--fraction", str(args.fraction)])


if __name__ == "__main__":  # vLLM's engine process re-imports this module: no work at import time
    main()
