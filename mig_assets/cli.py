"""``mig-assets``: the command line over the same Dagster assets the UI runs.

Runs are real Dagster materializations in the instance at ``$DAGSTER_HOME`` (default
``$MIG_HOME/dagster``), so everything the CLI does shows up in ``dagster dev`` with the same
``DAGSTER_HOME``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from mig_assets.core.embedding import DEFAULT_EMBEDDING_MODEL
from mig_assets.core.ingest import file_sha256
from mig_assets.core.warehouse import ShardPathError, WarehouseLayout
from mig_assets.resources.warehouse import DEFAULT_MIG_HOME

TOTALS = ("rows_read", "rows_kept", "rows_quarantined", "duplicates")
# runs launched from the CLI log at INFO (our progress lines), not Dagster's DEBUG event stream
CLI_LOGGING = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def mig_home() -> Path:
    return Path(os.environ.get("MIG_HOME", DEFAULT_MIG_HOME)).resolve()


def dagster_instance(layout: WarehouseLayout):
    """The persistent instance; creates ``$MIG_HOME/dagster`` with the project's dagster.yaml."""
    import dagster as dg

    if not os.environ.get("DAGSTER_HOME"):
        home = layout.home / "dagster"
        home.mkdir(parents=True, exist_ok=True)
        config = home / "dagster.yaml"
        if not config.exists():
            config.write_text(resources.files("mig_assets").joinpath("dagster.yaml").read_text())
        os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


@contextmanager
def stdout_to_stderr():
    """Send everything written to file descriptor 1 (engine subprocesses included) to stderr, so
    that stdout carries only the command's JSON result."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def place_in_pool(layout: WarehouseLayout, path: Path) -> tuple[str, Path]:
    """Shard key and pool path of ``path``, copying it into pool/incoming when it lives elsewhere.

    A different file of the same name replaces the previous copy: it is a new version of that shard.
    """
    path = Path(path)
    if not path.is_file():
        raise ShardPathError(f"{path}: no such file")
    if path.resolve().is_relative_to(layout.incoming_dir.resolve()):
        return layout.shard_key(path), path
    target = layout.incoming_dir / path.name
    if not (target.exists() and file_sha256(target) == file_sha256(path)):
        if target.exists():
            print(f"{target} changed: ingesting {path} as a new version of that shard", file=sys.stderr)
        staging = target.with_name(f".{target.name}.part")
        shutil.copyfile(path, staging)
        os.replace(staging, target)
    return layout.shard_key(target), target


def ingest_files(layout: WarehouseLayout, files: list[Path], instance, run_config: dict | None = None) -> dict:
    """Register ``files`` as pool_shards partitions, materialize raw_pool for each, return totals."""
    import dagster as dg

    from mig_assets.definitions import build_resources
    from mig_assets.partitions import pool_shards
    from mig_assets.pool.assets import raw_pool

    keys = [place_in_pool(layout, f)[0] for f in files]
    known = set(instance.get_dynamic_partitions(pool_shards.name))
    new = [k for k in dict.fromkeys(keys) if k not in known]
    if new:
        instance.add_dynamic_partitions(pool_shards.name, new)
    totals: dict = {name: 0 for name in TOTALS} | {"shards": []}
    unique = list(dict.fromkeys(keys))
    for done, key in enumerate(unique, start=1):
        result = dg.materialize(
            [raw_pool],
            partition_key=key,
            instance=instance,
            resources=build_resources(),
            run_config=(run_config or {}) | CLI_LOGGING,
            tags={"mig/launched_by": "cli"},
        )
        metadata = result.asset_materializations_for_node("raw_pool")[0].metadata
        shard = {"shard": key, **{name: metadata[name].value for name in TOTALS}, "run_id": result.run_id}
        totals["shards"].append(shard)
        for name in TOTALS:
            totals[name] += shard[name]
        print(f"{_bar(done, len(unique))} {key}: {shard['rows_read']:,} rows read, {shard['rows_kept']:,} kept", file=sys.stderr)
    return totals


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = width * done // max(total, 1)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def _print_quarantine(layout: WarehouseLayout, shards: list[str], limit: int = 10) -> None:
    import pyarrow.parquet as pq

    shown = 0
    for shard in shards:
        for row in pq.read_table(layout.shard_file("quarantine", shard), columns=["reason"]).to_pylist():
            if shown == limit:
                print("quarantined: ... (query the `quarantine` view for all)", file=sys.stderr)
                return
            print(f"quarantined: {row['reason']}", file=sys.stderr)
            shown += 1


def cmd_ingest(args: argparse.Namespace) -> int:
    layout = WarehouseLayout(mig_home()).ensure()
    run_config = {"ops": {"raw_pool": {"config": {"source_format": args.format}}}} if args.format != "auto" else None
    with stdout_to_stderr():
        totals = ingest_files(layout, args.files, dagster_instance(layout), run_config)
        _print_quarantine(layout, [s["shard"] for s in totals["shards"]])
    print(json.dumps(totals, indent=2))
    return 0


def materialize_all(layout: WarehouseLayout, instance, shard_keys: list[str]) -> dict:
    """Tag each shard, then materialize every global asset (vocabulary, embeddings, graph, selections)."""
    import dagster as dg

    from mig_assets.definitions import build_resources, defs

    from mig_assets.partitions import pool_shards

    assets = list(defs.assets)
    shard_assets = [a for a in assets if a.partitions_def is not None and a.key.to_user_string() != "raw_pool"]
    if shard_keys:  # one run over the shards' range: the tagging model loads once
        ordered = [k for k in instance.get_dynamic_partitions(pool_shards.name) if k in set(shard_keys)]
        dg.materialize(
            assets, selection=shard_assets, instance=instance, resources=build_resources(), run_config=CLI_LOGGING,
            tags={"dagster/asset_partition_range_start": ordered[0], "dagster/asset_partition_range_end": ordered[-1]},
        )
    result = dg.materialize(
        assets, selection=[a for a in assets if a.partitions_def is None], instance=instance, resources=build_resources(),
        run_config=CLI_LOGGING,
    )
    return {
        node: {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items() if k in SUMMARY_KEYS}
        for node in sorted({key.to_user_string() for a in assets if a.partitions_def is None for key in a.keys})
    }


SUMMARY_KEYS = (
    "dagster/row_count", "labels", "edges", "version", "objective", "label_coverage", "leaves_covered",
    "kl_target_selection", "export_dir",
)


def cmd_demo(args: argparse.Namespace) -> int:
    # the tagger is chosen before the definitions load: it decides atomic_tags' code version
    os.environ.setdefault("MIG_TAGGER_BACKEND", args.tagger)
    from mig_assets.demo_pool import write_demo_pool, write_demo_target

    layout = WarehouseLayout(mig_home()).ensure()
    instance = dagster_instance(layout)
    with stdout_to_stderr():
        files = write_demo_pool(layout.incoming_dir / "demo")
        if not os.environ.get("MIG_TARGET_PATH"):
            write_demo_target(layout.home / "targets")
        totals = ingest_files(layout, files, instance)
        _print_quarantine(layout, [s["shard"] for s in totals["shards"]])
        assets = materialize_all(layout, instance, [s["shard"] for s in totals["shards"]])
    print(json.dumps({"ingest": totals, "assets": assets}, indent=2, default=str))
    exports = "\n".join(f"  {name:<18}  {info['export_dir']}" for name, info in assets.items() if "export_dir" in info)
    print(
        f"\nDemo pool ingested, tagged ({os.environ['MIG_TAGGER_BACKEND']} backend) and selected in {layout.home}\n"
        f"selected subsets (data.jsonl for LLaMA-Factory, data.parquet, manifest.json):\n{exports}\n"
        f"catalog (DuckDB):  duckdb -readonly {layout.duckdb_path} -c 'SELECT * FROM selections'\n"
        f"Dagster UI:        DAGSTER_HOME={os.environ['DAGSTER_HOME']} MIG_HOME={layout.home} dagster dev",
        file=sys.stderr,
    )
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """The reference ``mig sample``: selected input records, unchanged, in selection order."""
    from mig_assets.core.embedding import SentenceEmbedder
    from mig_assets.core.mig import MigParams
    from mig_assets.core.mig_sample import run_sample

    params = MigParams(
        tau=args.sim_threshold, prop_weight=args.prop_weight, norm=args.norm, phi=args.phi_type,
        phi_a=args.phi_a, phi_b=args.phi_b, phi_alpha=args.phi_alpha, gain=args.gain,
    )
    embed = None
    if args.sampler_type == "mig" and not args.label_embeddings:
        embed = SentenceEmbedder(args.embedding_model or DEFAULT_EMBEDDING_MODEL).encode
    out = args.out or args.pool.with_name(f"{args.pool.stem}-sampled-{args.num}.jsonl")
    stats = run_sample(
        args.pool, out, args.num, valid_tag_path=args.valid_tag_path or None,
        label_embeddings_prefix=args.label_embeddings, embed_labels=embed,
        sampler_type=args.sampler_type, params=params, batch_size=args.batch_size,
    )
    print(json.dumps({"out": str(out), **stats}, indent=2), file=sys.stderr)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    import duckdb

    from mig_assets.core.explain import explain

    layout = WarehouseLayout(mig_home())
    tree = None
    if (layout.warehouse_dir / "knowledge_tree" / "tree.json").exists():  # recomputes TAGS gains
        from mig_assets.tree.assets import load_tree

        tree, _ = load_tree(layout)
    with duckdb.connect(str(layout.duckdb_path), read_only=True) as con:
        answer = explain(con, args.sample_id, args.selection, args.version, tree)
    print(json.dumps(answer, indent=2, default=str))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Materialize selection_comparison at one budget and print its table."""
    import dagster as dg

    from mig_assets.definitions import build_resources, defs

    layout = WarehouseLayout(mig_home())
    instance = dagster_instance(layout)
    budget = {"budget_fraction": None, "budget_count": args.count} if args.count else {"budget_fraction": args.fraction}
    run_config = {"ops": {"selection_comparison": {"config": budget | {"seed": args.seed}}}} | CLI_LOGGING
    with stdout_to_stderr():
        result = dg.materialize(
            list(defs.assets), selection=["selection_comparison"], instance=instance, resources=build_resources(),
            run_config=run_config, tags={"mig/launched_by": "cli"},
        )
    metadata = result.asset_materializations_for_node("selection_comparison")[0].metadata
    print(metadata["methods"].value)
    print(f"\nreport, plots, JSON and CSV-ready tables: {metadata['export_dir'].value}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mig-assets", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ingest = sub.add_parser("ingest", help="register and ingest shard files; prints a JSON summary")
    ingest.add_argument("files", nargs="+", type=Path, help="JSONL, JSON (array or object) or Parquet files")
    ingest.add_argument("--format", default="auto", help="auto, mig, sharegpt, openai, alpaca, turns or prompt")
    ingest.set_defaults(func=cmd_ingest)
    demo = sub.add_parser("demo", help="set up MIG_HOME, ingest the demo pool and run every asset")
    demo.add_argument(
        "--tagger", choices=["vllm", "imported"], default="vllm",
        help="vllm: SmolLM2-135M on vLLM (CPU here, ~3 min); imported: the annotations in the pool (seconds). "
        "MIG_TAGGER_BACKEND, when set, wins.",
    )
    demo.set_defaults(func=cmd_demo)
    sample = sub.add_parser("sample", help="the MIG reference's `mig sample`: select records of an annotated pool")
    sample.add_argument("pool", type=Path, help="JSONL pool in the MIG reference schema")
    sample.add_argument("--out", type=Path, default=None, help="output JSONL (default: POOL-sampled-N.jsonl)")
    sample.add_argument("-n", "--num", type=int, default=100, help="number of samples to select")
    sample.add_argument("--valid-tag-path", default="", help="JSON list of valid tags (all tags when empty)")
    sample.add_argument("--label-graph-type", choices=["sim"], default="sim")
    sample.add_argument("--embedding-model", default="", help=f"sentence-transformers model (default {DEFAULT_EMBEDDING_MODEL})")
    sample.add_argument("--label-embeddings", default=None, metavar="PREFIX", help="PREFIX.labels.json + PREFIX.emb.npy instead of a model")
    sample.add_argument("--sim-threshold", type=float, default=0.9)
    sample.add_argument("--prop-weight", type=float, default=1.0)
    sample.add_argument("--norm", action="store_true", help="split a sample's score across its labels")
    sample.add_argument("--phi-type", choices=["pow", "exp"], default="pow")
    sample.add_argument("--phi-a", type=float, default=1e-6)
    sample.add_argument("--phi-b", type=float, default=0.8)
    sample.add_argument("--phi-alpha", type=float, default=1.0)
    sample.add_argument("--batch-size", type=int, default=0, help="accepted for compatibility; never changes the result")
    sample.add_argument("--sampler-type", choices=["mig", "random"], default="mig")
    sample.add_argument("--gain", choices=["gradient", "exact"], default="gradient")
    sample.set_defaults(func=cmd_sample)
    why = sub.add_parser("explain", help="lineage of one sample and why it is (not) in a selection")
    why.add_argument("sample_id", help="a sample_id or an unambiguous prefix of at least 8 characters")
    why.add_argument("--selection", default=None, help="selection name (default: the latest selection made)")
    why.add_argument("--version", type=int, default=None, help="selection version (default: the latest)")
    why.set_defaults(func=cmd_explain)
    compare = sub.add_parser("compare", help="every selection method at one budget, measured side by side")
    size = compare.add_mutually_exclusive_group()
    size.add_argument("--fraction", type=float, default=0.1, help="share of the pool each method selects (default 0.1)")
    size.add_argument("--count", type=int, default=None, help="samples each method selects")
    compare.add_argument("--seed", type=int, default=42)
    compare.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.filterwarnings("ignore", message=".*is currently in beta.*")  # backfill_policy's notice, once per asset
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ShardPathError, ValueError, FileNotFoundError) as exc:
        print(f"mig-assets: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
