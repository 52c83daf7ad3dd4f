"""``atomic_tags[shard]`` and the global ``tag_vocabulary``."""

from collections import Counter

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mig_assets.core.io import write_parquet_atomic
from mig_assets.core.tagging import imported_tag_rows
from mig_assets.core.tags import normalize_tag
from mig_assets.partitions import pool_shards
from mig_assets.pool.assets import raw_pool
from mig_assets.resources import Warehouse

TAGGING_CODE_VERSION = "imported-1"
TOP_TAGS = 15


@dg.asset(
    partitions_def=pool_shards,
    deps=[raw_pool],
    group_name="tagging",
    kinds={"parquet"},
    code_version=TAGGING_CODE_VERSION,
    pool="duckdb",
    description="Canonical knowledge/skill tags per kept sample of the shard, with parse status "
    "(backend: imported annotations).",
)
def atomic_tags(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    layout = warehouse.layout
    shard = context.partition_key
    samples = pq.read_table(layout.shard_file("raw_pool", shard), columns=["sample_id", "imported_tags", "duplicate_of"])
    kept = samples.filter(pc.is_null(samples.column("duplicate_of")))
    table = imported_tag_rows(kept, shard)
    path = write_parquet_atomic(table, layout.shard_file("atomic_tags", shard))
    with warehouse.connect() as con:
        layout.refresh_catalog(con)
    statuses = Counter(table.column("status").to_pylist())
    tag_counts = Counter(tag for tags in table.column("tags").to_pylist() for tag in tags)
    per_sample = Counter(len(tags) for tags in table.column("tags").to_pylist())
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": table.num_rows,
            "statuses": dg.MetadataValue.json(dict(statuses)),
            "tags_per_sample": dg.MetadataValue.json({str(k): v for k, v in sorted(per_sample.items())}),
            "top_tags": dg.MetadataValue.md(_top_tags_md(tag_counts)),
            "backend": "imported",
            "path": dg.MetadataValue.path(str(path)),
        }
    )


def _top_tags_md(counts: Counter) -> str:
    rows = ["| tag | samples |", "|---|---|"] + [f"| {tag} | {n} |" for tag, n in counts.most_common(TOP_TAGS)]
    return "\n".join(rows) if counts else "_no tags_"


@dg.asset(
    deps=[dg.AssetDep(atomic_tags, partition_mapping=dg.AllPartitionMapping())],
    group_name="tagging",
    kinds={"duckdb"},
    code_version="1",
    pool="duckdb",
    description="Every canonical tag with the number of kept samples carrying it, and the surface "
    "forms that normalize to it (tables tag_vocabulary and tag_surface_forms).",
)
def tag_vocabulary(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        warehouse.layout.refresh_catalog(con)
        con.execute(
            """
            CREATE OR REPLACE TABLE tag_vocabulary AS
            SELECT tag, count(DISTINCT t.sample_id) AS n_samples
            FROM (SELECT sample_id, unnest(tags) AS tag FROM atomic_tags WHERE status = 'ok') AS t
            JOIN samples USING (sample_id)
            GROUP BY tag ORDER BY n_samples DESC, tag
            """
        )
        surface = con.execute(
            "SELECT surface, count(*) FROM (SELECT unnest(surface_tags) AS surface FROM atomic_tags) GROUP BY surface ORDER BY surface"
        ).fetchall()
        forms = pa.table(
            {
                "surface": [s for s, _ in surface],
                "tag": pa.array([normalize_tag(s) for s, _ in surface], pa.string()),
                "occurrences": pa.array([n for _, n in surface], pa.int64()),
            }
        )
        con.register("surface_forms_arrow", forms)
        con.execute("CREATE OR REPLACE TABLE tag_surface_forms AS SELECT * FROM surface_forms_arrow")
        con.unregister("surface_forms_arrow")
        n_tags, n_tagged = con.execute("SELECT count(*), coalesce(sum(n_samples), 0) FROM tag_vocabulary").fetchall()[0]
        top = con.execute("SELECT tag, n_samples FROM tag_vocabulary LIMIT ?", [TOP_TAGS]).fetchall()
    dropped = sum(n for s, n in surface if normalize_tag(s) is None)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": n_tags,
            "tag_assignments": n_tagged,
            "surface_forms": len(surface),
            "surface_occurrences_dropped_as_generic": dropped,
            "top_tags": dg.MetadataValue.md(_top_tags_md(Counter(dict(top)))),
        }
    )
