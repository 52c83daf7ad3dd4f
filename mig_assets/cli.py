"""``mig-assets``: the command line over the same Dagster assets the UI runs.

Runs are real Dagster materializations in the instance at ``$DAGSTER_HOME`` (default
``$MIG_HOME/dagster``), so everything the CLI does shows up in ``dagster dev`` with the same
``DAGSTER_HOME``. Settings come from ``MIG_HOME/mig.yaml`` (``mig-assets init`` writes it,
``mig-assets config`` shows what is in effect), exactly as the UI reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mig_assets.core.embedding.encoder import DEFAULT_EMBEDDING_MODEL
from mig_assets.core.mig.problem import MigParams
from mig_assets.core.selection.compare import COMPARISON_FRACTION
from mig_assets.core.selection.request import SELECTION_DEFAULTS
from mig_assets.core.store.catalog import open_catalog, publish_catalog
from mig_assets.core.store.layout import ShardPathError, WarehouseLayout
from mig_assets.launch import (
    CLI_LOGGING,
    StepsFailed,
    dagster_instance,
    ingest_files,
    log_file,
    output_to_log,
    run_over_ranges,
    run_pipeline,
    shards_needing,
)
from mig_assets.settings import (
    DEFAULT_MIG_HOME,
    SETTINGS_FILE,
    SettingsError,
    load_settings,
    mig_home,
    render_settings_file,
    unknown_variables,
    write_settings_file,
)


def _print_quarantine(layout: WarehouseLayout, shards: list[str], say, limit: int = 10) -> None:
    import pyarrow.parquet as pq

    shown = 0
    for shard in shards:
        for row in pq.read_table(layout.shard_file("quarantine", shard), columns=["reason"]).to_pylist():
            if shown == limit:
                say("quarantined: ... (query the `quarantine` view for all)")
                return
            say(f"quarantined: {row['reason']}")
            shown += 1


def cmd_ingest(args: argparse.Namespace) -> int:
    layout = WarehouseLayout(mig_home()).ensure()
    run_config = {"ops": {"raw_pool": {"config": {"source_format": args.format}}}} if args.format != "auto" else None
    with output_to_log(layout) as say:
        totals = ingest_files(layout, args.files, dagster_instance(layout), say, run_config)
        _print_quarantine(layout, [s["shard"] for s in totals["shards"]], say)
    print(json.dumps(totals, indent=2))
    damaged = [s for s in totals["shards"] if s["container_errors"]]
    for shard in damaged:  # the readable part is ingested; the file itself needs a look
        print(
            f"mig-assets: {shard['source_file']} is damaged: {'; '.join(shard['container_errors'])} "
            f"({shard['rows_kept']:,} readable records kept, the unreadable part quarantined)",
            file=sys.stderr,
        )
    return 2 if damaged else 0


def cmd_init(args: argparse.Namespace) -> int:
    """Write a commented settings file with the defaults (an existing one is kept)."""
    home = Path(args.dir).expanduser().resolve() if args.dir else mig_home()
    layout = WarehouseLayout(home).ensure()
    path = home / SETTINGS_FILE
    if path.exists():
        print(f"{path} exists: kept as it is (`mig-assets config` shows what is in effect)", file=sys.stderr)
    else:
        path.write_text(render_settings_file(), encoding="utf-8")
        print(f"wrote {path} (every key commented out at its default)", file=sys.stderr)
    dagster_instance(layout)
    hint = "" if home == mig_home() else f"MIG_HOME={home} "
    print(
        f"next: put shard files in {layout.incoming_dir} (or `{hint}mig-assets ingest FILE...`), then `{hint}mig-assets run`",
        file=sys.stderr,
    )
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """The effective settings and where each value came from."""
    settings = load_settings()
    if args.json:
        print(json.dumps({"file": str(settings.file), "values": settings.values, "origins": settings.origins}, indent=2, default=str))
        return 0
    print(f"# settings file: {settings.file}{'' if settings.file.exists() else ' (missing: every value is a default)'}")
    for section, values in settings.values.items():
        for key, value in values.items():
            origin = settings.origins[f"{section}.{key}"]
            print(f"{section}.{key} = {json.dumps(value, default=str)}  ({'file' if origin == 'file' else origin})")
    for variable in unknown_variables():
        print(f"# warning: {variable} is set but overrides no setting", file=sys.stderr)
    return 0


def _print_exports(assets: dict, say) -> None:
    exports = "\n".join(f"  {name:<18}  {info['export_dir']}" for name, info in assets.items() if "export_dir" in info)
    say(f"selected subsets (data.jsonl for LLaMA-Factory, data.parquet, manifest.json):\n{exports}")


def cmd_run(args: argparse.Namespace) -> int:
    layout = WarehouseLayout(mig_home()).ensure()
    instance = dagster_instance(layout)
    code, failed = 0, None
    with output_to_log(layout) as say:
        say(f"logs: {log_file(layout)}")
        try:
            assets = run_pipeline(layout, instance, say, retag=args.retag)
        except StepsFailed as exc:
            assets, failed, code = exc.summary, str(exc), 1
        _print_exports(assets, say)
    print(json.dumps(assets, indent=2, default=str))
    if failed:
        print(f"mig-assets: {failed}", file=sys.stderr)
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    from mig_assets.demo_pool import write_demo_pool, write_demo_target

    layout = WarehouseLayout(mig_home()).ensure()
    # recorded in the settings file before the definitions load (the tagger decides atomic_tags' code
    # version), so `dagster dev` started afterwards tags with the same tagger
    write_settings_file(layout.home, {"tagger.backend": args.tagger})
    settings = load_settings(layout.home)
    if settings.values["tagger"]["backend"] != args.tagger:
        raise SettingsError(f"{settings.origins['tagger.backend']} overrides the demo's --tagger {args.tagger}: unset it")
    instance = dagster_instance(layout)
    with output_to_log(layout) as say:
        say(f"demo in {layout.home} (settings {settings.file}, logs {log_file(layout)})")
        files = write_demo_pool(layout.incoming_dir / "demo")
        if not settings.target.path:
            write_demo_target(layout.home / "targets")
        totals = ingest_files(layout, files, instance, say)
        _print_quarantine(layout, [s["shard"] for s in totals["shards"]], say)
        assets = run_pipeline(layout, instance, say)
        say(f"\nDemo pool ingested, tagged ({args.tagger} backend) and selected in {layout.home}")
        _print_exports(assets, say)
        ui = f"DAGSTER_HOME={os.environ['DAGSTER_HOME']} dagster dev"
        if layout.home != Path(DEFAULT_MIG_HOME).resolve():
            ui = f"MIG_HOME={layout.home} {ui}"
        say(f"catalog (DuckDB):  mig-assets sql 'SELECT * FROM selections'\nDagster UI:        {ui}   (`make dev` for ./mig_home)")
    print(json.dumps({"ingest": totals, "assets": assets}, indent=2, default=str))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """The reference ``mig sample``: selected input records, unchanged, in selection order."""
    from mig_assets.core.embedding.encoder import SentenceEmbedder
    from mig_assets.core.mig.sample import run_sample

    params = MigParams(
        tau=args.sim_threshold,
        prop_weight=args.prop_weight,
        norm=args.norm,
        phi=args.phi_type,
        phi_a=args.phi_a,
        phi_b=args.phi_b,
        phi_alpha=args.phi_alpha,
        gain=args.gain,
    )
    embed = None
    if args.sampler_type == "mig" and not args.label_embeddings:
        embed = SentenceEmbedder(args.embedding_model or DEFAULT_EMBEDDING_MODEL).encode
    out = args.out or args.pool.with_name(f"{args.pool.stem}-sampled-{args.num}.jsonl")
    stats = run_sample(
        args.pool,
        out,
        args.num,
        valid_tag_path=args.valid_tag_path or None,
        label_embeddings_prefix=args.label_embeddings,
        embed_labels=embed,
        sampler_type=args.sampler_type,
        params=params,
        batch_size=args.batch_size,
    )
    print(json.dumps({"out": str(out), **stats}, indent=2), file=sys.stderr)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from mig_assets.core.outputs.explain import explain
    from mig_assets.orchestration.provenance import latest_materializations

    layout = WarehouseLayout(mig_home())
    if not layout.warehouse_dir.exists():
        raise FileNotFoundError(f"no catalog at {layout.warehouse_dir}: nothing was ingested under MIG_HOME={layout.home} yet")
    tree = None
    if (layout.warehouse_dir / "knowledge_tree" / "tree.json").exists():  # recomputes TAGS gains
        from mig_assets.core.tags.tree import load_tree

        tree, _ = load_tree(layout.knowledge_tree_dir)
    instance = dagster_instance(layout)  # names the runs that changed an input since the version
    with open_catalog(layout) as con:  # over the Parquet: works while the catalog file is missing or corrupt
        answer = explain(con, args.sample_id, args.selection, args.version, lambda shard: latest_materializations(instance, shard), tree)
    print(json.dumps(answer, indent=2, default=str))
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    """Rebuild a missing or corrupt catalog file from the Parquet, and re-ingest the shards whose
    samples or quarantine file was deleted (exit 2 when one cannot be restored: its source is gone)."""
    layout = WarehouseLayout(mig_home()).ensure()
    report: dict = {"catalog": publish_catalog(layout), "catalog_file": str(layout.duckdb_path)}
    missing = layout.missing_shard_files()
    for shard, files in missing.items():
        print(f"shard {shard}: {', '.join(str(f) for f in files)} missing", file=sys.stderr)
    sources, _ = layout.discover_shards()
    restorable = [sources[shard] for shard in missing if shard in sources]
    report["missing_shard_files"] = {shard: [str(f) for f in files] for shard, files in missing.items()}
    report["unrecoverable"] = sorted(shard for shard in missing if shard not in sources)
    report["reingested"] = []
    if restorable:
        with output_to_log(layout) as say:
            report["reingested"] = ingest_files(layout, restorable, dagster_instance(layout), say)["shards"]
    for shard in report["unrecoverable"]:
        print(f"mig-assets: shard {shard} cannot be restored: no file under {layout.incoming_dir} has that key", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 2 if report["unrecoverable"] else 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Run compare_job (selection_comparison at one budget) and print its table."""
    from mig_assets.definitions import defs

    layout = WarehouseLayout(mig_home())
    instance = dagster_instance(layout)
    budget = {"budget_fraction": None, "budget_count": args.count} if args.count else {"budget_fraction": args.fraction}
    run_config = {"ops": {"selection_comparison": {"config": budget | {"seed": args.seed}}}} | CLI_LOGGING
    with output_to_log(layout) as say:
        say("selection_comparison (compare_job) ...")
        result = defs.resolve_job_def("compare_job").execute_in_process(
            instance=instance,
            run_config=run_config,
            tags={"mig/launched_by": "cli"},
        )
    metadata = result.asset_materializations_for_node("selection_comparison")[0].metadata
    print(metadata["methods"].value)
    print(f"\nreport, plots, JSON and CSV-ready tables: {metadata['export_dir'].value}", file=sys.stderr)
    return 0


def cmd_decontaminate(args: argparse.Namespace) -> int:
    """Register the benchmark files (and --ngram/--threshold) in mig.yaml, check every ingested shard
    whose contamination is missing, older than its raw_pool or made with other benchmarks or
    thresholds (decontaminate_job), and print one JSON object of counts over all shards."""
    from mig_assets.core.curation.shard_check import summarize
    from mig_assets.settings import current_settings

    layout = WarehouseLayout(mig_home()).ensure()
    files = [path.expanduser().resolve() for path in args.against]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: benchmark file not found")
    updates = {"decontamination.benchmarks": [str(p) for p in files]}
    updates |= {"decontamination.ngram": args.ngram} if args.ngram is not None else {}
    updates |= {"decontamination.threshold": args.threshold} if args.threshold is not None else {}
    write_settings_file(layout.home, updates)
    current_settings.cache_clear()  # the definitions below are built from the file just written
    from mig_assets.definitions import contamination, defs
    from mig_assets.orchestration.partitions import pool_shards

    instance = dagster_instance(layout)
    ordered = list(instance.get_dynamic_partitions(pool_shards.name))
    if not ordered:
        raise ValueError(f"nothing ingested in {layout.home}: `mig-assets ingest FILE...` first")
    needed, _ = shards_needing(instance, contamination, ordered, retag=True)
    with output_to_log(layout) as say:
        run_over_ranges(defs.resolve_job_def("decontaminate_job"), instance, ordered, needed, "contamination", say)
    summary = summarize({shard: layout.shard_file("contamination", shard) for shard in ordered}, [str(p) for p in files])
    print(json.dumps({**summary, "shards_checked_now": len(needed)}, indent=2))
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    """One query over the catalog's views (a private session over the Parquet, so it never holds a
    lock a run needs), printed as a table or as JSON lines."""
    import duckdb

    layout = WarehouseLayout(mig_home())
    if not layout.warehouse_dir.exists():
        raise FileNotFoundError(f"{layout.warehouse_dir}: no warehouse yet (ingest something first)")
    con = open_catalog(layout)
    try:
        try:
            relation = con.sql(args.query)
        except duckdb.Error as exc:
            raise ValueError(f"query failed: {exc}") from None
        if relation is None:
            return 0
        if args.json:
            names = relation.columns
            for row in relation.fetchall():
                print(json.dumps(dict(zip(names, row)), default=str))
        else:
            relation.show(max_rows=args.max_rows, max_width=10_000)
    finally:
        con.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mig-assets", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ingest = sub.add_parser("ingest", help="register and ingest shard files; prints a JSON summary")
    ingest.add_argument("files", nargs="+", type=Path, help="JSONL, JSON (array or object) or Parquet files")
    ingest.add_argument("--format", default="auto", help="auto, mig, sharegpt, openai, alpaca, turns or prompt")
    ingest.set_defaults(func=cmd_ingest)
    init = sub.add_parser("init", help="write MIG_HOME/mig.yaml, the project settings, with every default (commented)")
    init.add_argument("dir", nargs="?", default=None, help="the MIG_HOME to set up (default: $MIG_HOME or ./mig_home)")
    init.set_defaults(func=cmd_init)
    config = sub.add_parser("config", help="print the effective settings and where each value came from")
    config.add_argument("--json", action="store_true", help="as one JSON object")
    config.set_defaults(func=cmd_config)
    run = sub.add_parser("run", help="tag, embed and score what was ingested, then re-select (tag_job, reselect_job)")
    run.add_argument("--retag", action="store_true", help="also re-make tags, scores and embeddings made by another configuration")
    run.set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help="write the demo pool, ingest it and run everything (records --tagger in mig.yaml)")
    demo.add_argument(
        "--tagger",
        choices=["vllm", "imported"],
        default="vllm",
        help="vllm: SmolLM2-135M on vLLM (CPU here, ~3 min); imported: the annotations in the pool (seconds)",
    )
    demo.set_defaults(func=cmd_demo)
    sql = sub.add_parser("sql", help="run one SQL query over the catalog (read-only), e.g. 'SELECT * FROM selections'")
    sql.add_argument("query")
    sql.add_argument("--json", action="store_true", help="one JSON object per row")
    sql.add_argument("--max-rows", type=int, default=40)
    sql.set_defaults(func=cmd_sql)
    sample = sub.add_parser("sample", help="the MIG reference's `mig sample`: select records of an annotated pool")
    sample.add_argument("pool", type=Path, help="JSONL pool in the MIG reference schema")
    sample.add_argument("--out", type=Path, default=None, help="output JSONL (default: POOL-sampled-N.jsonl)")
    sample.add_argument("-n", "--num", type=int, default=100, help="number of samples to select")
    sample.add_argument("--valid-tag-path", default="", help="JSON list of valid tags (all tags when empty)")
    sample.add_argument("--label-graph-type", choices=["sim"], default="sim")
    sample.add_argument("--embedding-model", default="", help=f"sentence-transformers model (default {DEFAULT_EMBEDDING_MODEL})")
    sample.add_argument("--label-embeddings", default=None, metavar="PREFIX", help="PREFIX.labels.json + PREFIX.emb.npy instead of a model")
    sample.add_argument("--sim-threshold", type=float, default=MigParams.tau)
    sample.add_argument("--prop-weight", type=float, default=MigParams.prop_weight)
    sample.add_argument("--norm", action="store_true", help="split a sample's score across its labels")
    sample.add_argument("--phi-type", choices=["pow", "exp"], default=MigParams.phi)
    sample.add_argument("--phi-a", type=float, default=MigParams.phi_a)
    sample.add_argument("--phi-b", type=float, default=MigParams.phi_b)
    sample.add_argument("--phi-alpha", type=float, default=MigParams.phi_alpha)
    sample.add_argument("--batch-size", type=int, default=0, help="accepted for compatibility; never changes the result")
    sample.add_argument("--sampler-type", choices=["mig", "random"], default="mig")
    sample.add_argument("--gain", choices=["gradient", "exact"], default=MigParams.gain)
    sample.set_defaults(func=cmd_sample)
    why = sub.add_parser("explain", help="lineage of one sample and why it is (not) in a selection")
    why.add_argument("sample_id", help="a sample_id or an unambiguous prefix of at least 8 characters")
    why.add_argument("--selection", default=None, help="selection name (default: the latest selection made)")
    why.add_argument("--version", type=int, default=None, help="selection version (default: the latest)")
    why.set_defaults(func=cmd_explain)
    repair = sub.add_parser("repair", help="rebuild a missing or corrupt catalog file; re-ingest shards whose Parquet was deleted")
    repair.set_defaults(func=cmd_repair)
    compare = sub.add_parser("compare", help="every selection method at one budget, measured side by side")
    size = compare.add_mutually_exclusive_group()
    size.add_argument("--fraction", type=float, default=COMPARISON_FRACTION, help=f"share of the pool each method selects (default {COMPARISON_FRACTION})")
    size.add_argument("--count", type=int, default=None, help="samples each method selects")
    compare.add_argument("--seed", type=int, default=SELECTION_DEFAULTS["seed"])
    compare.set_defaults(func=cmd_compare)
    decon = sub.add_parser("decontaminate", help="check the pool against benchmark files (registered in mig.yaml); prints a JSON summary")
    decon.add_argument("--against", nargs="+", type=Path, required=True, metavar="FILE", help="benchmark files in any pool format")
    decon.add_argument("--ngram", type=int, default=None, help="word n-gram size (default 8, Tulu 3's)")
    decon.add_argument("--threshold", type=float, default=None, help="flag above this share of an item's words in shared n-grams (default 0.5)")
    decon.set_defaults(func=cmd_decontaminate)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.filterwarnings("ignore", message=".*is currently in beta.*")  # backfill_policy's notice, once per asset
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ShardPathError, SettingsError, ValueError, FileNotFoundError) as exc:
        print(f"mig-assets: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mig-assets: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
