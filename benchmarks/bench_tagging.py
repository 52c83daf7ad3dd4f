"""Tagging benchmark: samples/s of the atomic_tags asset and its overhead over a bare ``llm.chat``.

    python benchmarks/bench_tagging.py [--model smollm2-135m-instruct] [--samples 200]

Runs unchanged on a GPU machine with the ``vllm`` package: pass a real tagger model there
(``--model /path/to/Qwen3-8B`` or any vLLM-loadable folder). Both paths tag the same real prompts
(AlpacaEval + Arena-Hard from ../shared/data/real) with the same prompt, schema and sampling, in
one process, both cold (no warm-up). The asset path adds the Dagster run, truncation, parsing,
retries of failed answers, the cache and Parquet writes; the engine load, paid once by each path,
is measured and excluded.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def real_prompts(n: int) -> list[str]:
    prompts = [r["instruction"] for r in json.loads((SHARED / "alpaca_eval_outputs.json").read_text())]
    prompts += [json.loads(line)["prompt"] for line in (SHARED / "arena_hard_v0.1_questions.jsonl").read_text().splitlines()]
    return prompts[:n]


def bare_chat(model_dir: str, prompts: list[str], prompt, sampling) -> dict:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from mig_assets.core.llm.backends import VllmBackend

    backend = VllmBackend(model=model_dir)
    engine = backend.engine()
    params = SamplingParams(
        temperature=sampling.temperature,
        max_tokens=sampling.max_tokens,
        seed=sampling.seed,
        structured_outputs=StructuredOutputsParams(json=prompt.schema),
    )
    started = time.perf_counter()
    engine.chat([prompt.messages(p) for p in prompts], params, use_tqdm=False)
    seconds = time.perf_counter() - started
    load = backend.load_seconds
    backend.close()
    return {"seconds": seconds, "engine_load_seconds": load}


def asset_run(model: str, prompts: list[str]) -> dict:
    import dagster as dg

    from mig_assets.core.ingest.shards import ingest_shard
    from mig_assets.core.store.layout import WarehouseLayout
    from mig_assets.defs.tagging.assets import build_atomic_tags
    from mig_assets.resources import Execution, Tagger, Warehouse

    with tempfile.TemporaryDirectory() as home:
        layout = WarehouseLayout(home).ensure()
        path = layout.incoming_dir / "bench.jsonl"
        path.write_text("\n".join(json.dumps({"prompt": p}) for p in prompts) + "\n")
        ingest_shard(layout, "bench.jsonl", path)
        tagger = Tagger(backend="vllm", model=model)
        with dg.DagsterInstance.ephemeral() as instance:
            instance.add_dynamic_partitions("pool_shards", ["bench.jsonl"])
            started = time.perf_counter()
            result = dg.materialize(
                [build_atomic_tags(tagger.version())],
                partition_key="bench.jsonl",
                instance=instance,
                resources={"warehouse": Warehouse(mig_home=home), "tagger": tagger, "execution": Execution()},
            )
            seconds = time.perf_counter() - started
        metadata = {k: v.value for k, v in result.asset_materializations_for_node("atomic_tags")[0].metadata.items()}
    return {"seconds": seconds, **{k: metadata[k] for k in ("engine_load_seconds", "generate_seconds", "statuses", "samples_per_second")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()

    from mig_assets.core.llm.models import resolve_llm
    from mig_assets.resources import Tagger

    tagger = Tagger(backend="vllm", model=args.model)
    prompts = real_prompts(args.samples)
    model_dir = resolve_llm(args.model)
    bare = bare_chat(model_dir, prompts, tagger.prompt, tagger.sampling)
    asset = asset_run(args.model, prompts)
    asset_work = asset["seconds"] - asset["engine_load_seconds"]
    print(f"model {args.model}, {len(prompts)} real prompts, prompt {tagger.prompt_version}, max_tokens {tagger.max_tokens}")
    print(
        f"bare llm.chat : {bare['seconds']:7.2f} s  {len(prompts) / bare['seconds']:6.2f} samples/s  (engine load {bare['engine_load_seconds']:.1f} s, excluded)"
    )
    print(
        f"atomic_tags   : {asset_work:7.2f} s  {len(prompts) / asset_work:6.2f} samples/s  (engine load {asset['engine_load_seconds']:.1f} s excluded; "
        f"generation {asset['generate_seconds']:.2f} s incl. retries; statuses {asset['statuses']})"
    )
    print(
        f"asset overhead over bare llm.chat: {100 * (asset_work / bare['seconds'] - 1):+.1f}% "
        f"(generation alone {100 * (asset['generate_seconds'] / bare['seconds'] - 1):+.1f}%)"
    )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
