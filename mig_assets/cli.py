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
from importlib import resources
from pathlib import Path

from mig_assets.core.ingest import file_sha256
from mig_assets.core.warehouse import ShardPathError, WarehouseLayout
from mig_assets.resources.warehouse import DEFAULT_MIG_HOME

TOTALS = ("rows_read", "rows_kept", "rows_quarantined", "duplicates")


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
    for key in dict.fromkeys(keys):
        result = dg.materialize(
            [raw_pool],
            partition_key=key,
            instance=instance,
            resources=build_resources(),
            run_config=run_config,
            tags={"mig/launched_by": "cli"},
        )
        metadata = result.asset_materializations_for_node("raw_pool")[0].metadata
        shard = {"shard": key, **{name: metadata[name].value for name in TOTALS}, "run_id": result.run_id}
        totals["shards"].append(shard)
        for name in TOTALS:
            totals[name] += shard[name]
    return totals


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
    totals = ingest_files(layout, args.files, dagster_instance(layout), run_config)
    _print_quarantine(layout, [s["shard"] for s in totals["shards"]])
    print(json.dumps(totals, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mig_assets.demo_pool import write_demo_pool

    layout = WarehouseLayout(mig_home()).ensure()
    files = write_demo_pool(layout.incoming_dir / "demo")
    totals = ingest_files(layout, files, dagster_instance(layout))
    _print_quarantine(layout, [s["shard"] for s in totals["shards"]])
    print(json.dumps(totals, indent=2))
    print(
        f"\nDemo pool ingested into {layout.home}\n"
        f"  samples (Parquet):  {layout.warehouse_dir / 'raw_pool'}\n"
        f"  catalog (DuckDB):   duckdb {layout.duckdb_path} -c 'SELECT count(*) FROM samples'\n"
        f"  Dagster UI:         DAGSTER_HOME={os.environ['DAGSTER_HOME']} MIG_HOME={layout.home} dagster dev",
        file=sys.stderr,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mig-assets", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ingest = sub.add_parser("ingest", help="register and ingest shard files; prints a JSON summary")
    ingest.add_argument("files", nargs="+", type=Path, help="JSONL, JSON (array or object) or Parquet files")
    ingest.add_argument("--format", default="auto", help="auto, mig, sharegpt, openai, alpaca, turns or prompt")
    ingest.set_defaults(func=cmd_ingest)
    demo = sub.add_parser("demo", help="set up MIG_HOME, ingest the demo pool and run every asset")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ShardPathError as exc:
        print(f"mig-assets: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
