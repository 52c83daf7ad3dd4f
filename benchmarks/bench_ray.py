"""Local vs Ray execution of ``atomic_tags`` and ``sample_embeddings`` on the same shards.

    python benchmarks/bench_ray.py [--shards 2] [--llm-samples 48] [--embed-samples 2000] [--fake-samples 4000]

Each stage is materialized twice over the same shards in one Dagster run (a partition range, as
``tag_job`` does): once with ``Execution()`` (in the step) and once with ``Execution(mode="ray")``
(a local Ray cluster started for the run by dagster-ray, one actor per ``--actors``), from an
empty cache each time. Stages:

- ``fake``: tagging with a fake backend that answers instantly: what Ray itself costs per row;
- ``embed``: sample embeddings with the packaged all-MiniLM-L6-v2 on CPU;
- ``vllm``: tagging with SmolLM2-135M-Instruct on vLLM's CPU engine (``--llm-samples 0`` skips it).

Reported per mode: the run's wall time, model rows/s (rows over the time the model was busy,
engine load excluded), end-to-end rows/s (the whole run), the Ray overhead (wall time over local),
split into cluster start, actor/model start and scheduling, and the peak memory of the process
tree (driver + Ray processes + engine), sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data" / "real"
CORES = os.cpu_count() or 1


class PeakMemory:
    """Peak RSS of this process and all its descendants (Ray's raylet, workers, vLLM's engine core)."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self.process, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            for proc in [self.process, *self.process.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def real_prompts(n: int) -> list[str]:
    prompts = [r["instruction"] for r in json.loads((SHARED / "alpaca_eval_outputs.json").read_text())]
    prompts += [json.loads(line)["prompt"] for line in (SHARED / "arena_hard_v0.1_questions.jsonl").read_text().splitlines()]
    return [prompts[i % len(prompts)] + ("" if i < len(prompts) else f" (variant {i // len(prompts)})") for i in range(n)]


def make_shards(layout, name: str, prompts: list[str], shards: int) -> list[str]:
    from mig_assets.core.ingest.shards import ingest_shard

    keys = []
    for s in range(shards):
        key = f"{name}-{s}.jsonl"
        path = layout.incoming_dir / key
        path.write_text("\n".join(json.dumps({"prompt": p}) for p in prompts[s::shards]) + "\n")
        ingest_shard(layout, key, path)
        keys.append(key)
    return keys


def run_stage(stage: str, home: str, keys: list[str], execution, tagger=None) -> dict:
    import dagster as dg
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    from mig_assets.core.store.batch_cache import EMBEDDING_CACHE_DIR, TAG_CACHE_DIR
    from mig_assets.defs.embeddings.assets import sample_embeddings
    from mig_assets.defs.tagging.assets import build_atomic_tags
    from mig_assets.resources import Embedder, Warehouse

    for folder in (TAG_CACHE_DIR, EMBEDDING_CACHE_DIR):
        shutil.rmtree(Path(home) / "warehouse" / folder, ignore_errors=True)
    asset = sample_embeddings if stage == "embed" else build_atomic_tags(tagger.version())
    resources = {"warehouse": Warehouse(mig_home=home), "embedder": Embedder(device="cpu"), "execution": execution}
    if tagger is not None:
        resources["tagger"] = tagger
    tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("pool_shards", keys)
        with PeakMemory() as memory:
            started = time.perf_counter()
            result = dg.materialize([asset], instance=instance, resources=resources, tags=tags, raise_on_error=False)
            seconds = time.perf_counter() - started
    node = "sample_embeddings" if stage == "embed" else "atomic_tags"
    metadata = {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}
    logs = [e.message for e in result.all_events if e.message]
    return {"seconds": seconds, "peak_mb": memory.peak / 2**20, "metadata": metadata, "logs": logs}


def measure(stage: str, home: str, keys: list[str], rows: int, actors: int, tagger=None) -> list[dict]:
    from mig_assets.resources import Execution

    out = []
    for mode, execution in (
        ("local", Execution()),
        # Ray CPUs: the actors take half the cluster (the read tasks need the rest, or the pipeline waits
        # forever); threads: the actors use every core between them, as local execution does
        ("ray", Execution(mode="ray", num_actors=actors, cpus_per_actor=1 / actors, omp_threads_per_actor=max(CORES // actors, 1))),
    ):
        run = run_stage(stage, home, keys, execution, tagger)
        out.append({"stage": stage, "mode": mode, "rows": rows, **run})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--fake-samples", type=int, default=4000)
    parser.add_argument("--embed-samples", type=int, default=2000)
    parser.add_argument("--llm-samples", type=int, default=48)
    parser.add_argument("--actors", type=int, default=1, help="Ray actors (they share the 2 CPUs)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")

    from mig_assets.core.store.layout import WarehouseLayout
    from tests.fakes import FakeTagger

    results = []
    for stage, rows in (("fake", args.fake_samples), ("embed", args.embed_samples), ("vllm", args.llm_samples)):
        if not rows:
            continue
        with tempfile.TemporaryDirectory() as home:  # one pool per stage: no sample is a duplicate of another stage's
            layout = WarehouseLayout(home).ensure()
            tagger = None
            if stage == "fake":
                keys = make_shards(layout, stage, [f"fake question {i}" for i in range(rows)], args.shards)
                tagger = FakeTagger(batch_size=256)
            else:
                keys = make_shards(layout, stage, real_prompts(rows), args.shards)
            if stage == "vllm":
                from mig_assets.core.llm.models import SMOLLM2, resolve_llm
                from mig_assets.resources import Tagger

                resolve_llm(SMOLLM2)
                tagger = Tagger(backend="vllm", model=SMOLLM2)
            results += measure(stage, home, keys, rows, args.actors, tagger)

    print(f"{os.cpu_count()} cores, {args.shards} shards per stage, Ray: a local cluster started for each run, {args.actors} actor(s)")
    print(f"{'stage':6} {'mode':5} {'rows':>6} {'wall s':>8} {'rows/s':>8} {'model rows/s':>13} {'load s':>7} {'peak MB':>8}  ray figures")
    by_stage: dict[str, dict] = {}
    for r in results:
        meta = r["metadata"]
        per_actor = meta.get("ray_rows_per_second_per_actor") or {}
        if r["stage"] == "embed":  # local: texts over the shard loop (model load included); Ray: actors' busy time
            model_rate = sum(per_actor.values()) if r["mode"] == "ray" else meta.get("texts_per_second", 0.0)
        else:
            model_rate = r["rows"] / meta["generate_seconds"] if meta.get("generate_seconds") else float("nan")
        load = meta.get("engine_load_seconds")
        figures = ""
        if r["mode"] == "ray":
            figures = (
                f"connect {meta.get('ray_connect_seconds')} s, actors {meta.get('ray_actors')}, batches {meta.get('ray_batches')}, "
                f"pipelines {meta.get('ray_pipeline_seconds')} s, rows/s per actor (last shard) {json.dumps(per_actor)}"
            )
        r["model_rows_per_second"] = model_rate
        r["rows_per_second"] = r["rows"] / r["seconds"]
        by_stage.setdefault(r["stage"], {})[r["mode"]] = r
        load_text = f"{load:7.1f}" if load is not None else f"{'-':>7}"
        print(
            f"{r['stage']:6} {r['mode']:5} {r['rows']:6d} {r['seconds']:8.1f} {r['rows_per_second']:8.1f} {model_rate:13.1f} "
            f"{load_text} {r['peak_mb']:8.0f}  {figures}"
        )
    for stage, modes in by_stage.items():
        if {"local", "ray"} <= set(modes):
            extra = modes["ray"]["seconds"] - modes["local"]["seconds"]
            print(f"{stage}: Ray overhead {extra:+.1f} s over local ({extra / modes['local']['rows']:+.4f} s/row at this size)")
    if args.json:
        plain = [
            {
                **{k: v for k, v in r.items() if k not in ("logs", "metadata")},
                "metadata": {k: v for k, v in r["metadata"].items() if not k.startswith("dagster/")},
            }
            for r in results
        ]
        Path(args.json).write_text(json.dumps(plain, default=str, indent=1))


if __name__ == "__main__":
    main()
