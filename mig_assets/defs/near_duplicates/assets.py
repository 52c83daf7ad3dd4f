"""``near_duplicates``: lexical and semantic near copies across the whole pool, one representative
kept per cluster (table and DuckDB view ``near_duplicates``).

One unpartitioned asset rather than one partition per shard: a shard's near copies can be in any
other shard, and a dynamic partition cannot depend on "the partitions registered before it". The
asset keeps per-shard state (signatures, pairs; ``core/curation/near_duplicate_state.py``) with a
fingerprint of what each file was computed from, so a run only signs and queries the new or
changed shards and reads the others back: correct whatever order shards are added, replaced or
re-tuned in, and the same result as a run from scratch.
"""

import dagster as dg
from pydantic import Field

from mig_assets.core.curation.near_duplicate_run import combined, embedding_clusters, minhash_clusters
from mig_assets.core.curation.near_duplicate_state import quality_weights
from mig_assets.core.curation.near_duplicates import EmbeddingParams, MinHashParams, range_query
from mig_assets.core.selection.lineage import SCORED_QUALITY_SQL
from mig_assets.core.store.catalog import has_relation, replace_table
from mig_assets.orchestration.automation import re_select
from mig_assets.orchestration.partitions import pool_shards
from mig_assets.orchestration.provenance import record_settings
from mig_assets.resources import Execution, Warehouse
from mig_assets.settings import current_settings, parse_methods

SETTINGS = current_settings().near_duplicates  # the `near_duplicates` section of mig.yaml
USER_TEXT = "SELECT sample_id, array_to_string(list_transform(list_filter(messages, lambda m: m.role = 'user'), lambda m: m.content), ' ') AS text FROM samples"


class NearDuplicatesConfig(dg.Config):
    methods: str = Field(default=SETTINGS.methods, description="comma-separated: minhash, embedding")
    num_perm: int = Field(default=SETTINGS.num_perm, description="MinHash permutations")
    minhash_threshold: float = Field(default=SETTINGS.minhash_threshold, description="estimated Jaccard of word shingles for a near copy")
    shingle_size: int = Field(default=SETTINGS.shingle_size, description="words per shingle")
    false_negative_weight: float = Field(default=SETTINGS.false_negative_weight, description="LSH band choice: weight of missed pairs")
    include_response: bool = Field(default=SETTINGS.include_response, description="MinHash over the assistant turns too")
    seed: int = Field(default=SETTINGS.seed, description="MinHash seed and IVF training sample seed")
    embedding_threshold: float = Field(default=SETTINGS.embedding_threshold, description="cosine of sample embeddings for a near copy")
    exact_search_below: int = Field(default=SETTINGS.exact_search_below, description="exact search up to this many samples, IVF above")
    nprobe: int = Field(default=SETTINGS.nprobe, description="IVF cells searched per query")

    def minhash(self) -> MinHashParams:
        return MinHashParams(self.num_perm, self.minhash_threshold, self.shingle_size, self.false_negative_weight, self.seed)

    def embedding(self) -> EmbeddingParams:
        return EmbeddingParams(self.embedding_threshold, self.exact_search_below, self.nprobe, self.seed)


@dg.asset(
    deps=["raw_pool", "sample_embeddings", "quality_scores"],
    group_name="curation",
    kinds={"parquet", "duckdb"},
    code_version="1",
    pool="duckdb",
    automation_condition=re_select,
    description="Near copies across the pool: MinHash LSH over word shingles and cosine over sample embeddings; each "
    "cluster keeps its best-weighted sample (then the lowest sample_id). View near_duplicates.",
)
def near_duplicates(context: dg.AssetExecutionContext, config: NearDuplicatesConfig, warehouse: Warehouse, execution: Execution) -> dg.MaterializeResult:
    record_settings(context)
    layout = warehouse.layout
    methods = parse_methods(config.methods)
    unknown = [m for m in methods if m not in ("minhash", "embedding")]
    if unknown:
        raise dg.Failure(f"unknown near-duplicate method(s) {', '.join(unknown)}: expected minhash, embedding")
    # pool order: partitions in registration order, those ingested
    shards = [s for s in context.instance.get_dynamic_partitions(pool_shards.name) if layout.shard_file("raw_pool", s).exists()]
    if "embedding" in methods:
        missing = [s for s in shards if not layout.shard_file("sample_embeddings", s).exists()]
        if missing:
            raise dg.Failure(
                f"{len(missing)} shard(s) have no sample_embeddings (first: {missing[0]}): materialize them (tag_job) "
                "or leave 'embedding' out of the setting near_duplicates.methods"
            )
    sign, search = None, range_query
    if execution.on_ray and shards:
        from mig_assets.core.curation.near_duplicates_ray import ray_search, sign_shards_on_ray

        context.log.info(f"near-duplicate work on Ray: {execution.connect(context.log.info)}")
        ray_settings = execution.settings(layout)
        minhash = config.minhash()

        def sign(stale):
            return sign_shards_on_ray(stale, layout.warehouse_dir, minhash, config.include_response, ray_settings)

        search = ray_search(ray_settings)
    figures: dict[str, dict] = {}
    tables = []
    with warehouse.connect() as con:
        scored = SCORED_QUALITY_SQL if has_relation(con, "quality_scores") else None

        def weights(ids):
            return quality_weights(con, ids, scored)

        if "minhash" in methods:
            files = {s: layout.shard_file("raw_pool", s) for s in shards}
            table, figures["minhash"] = minhash_clusters(layout.warehouse_dir, files, config.minhash(), config.include_response, weights, sign)
            tables.append(table)
        if "embedding" in methods:
            files = {s: layout.shard_file("sample_embeddings", s) for s in shards}
            table, figures["embedding"] = embedding_clusters(layout.warehouse_dir, files, config.embedding(), weights, search)
            tables.append(table)
        table = combined(tables)
        replace_table(con, "near_duplicates", table)
        [(excluded,)] = con.execute("SELECT count(DISTINCT sample_id) FROM near_duplicates WHERE sample_id <> representative_id").fetchall()
        examples = (
            con.sql(
                f"""SELECT n.method, n.similarity, left(s.text, 120) AS sample, left(r.text, 120) AS representative
               FROM near_duplicates n JOIN ({USER_TEXT}) s USING (sample_id)
               JOIN (SELECT sample_id AS representative_id, text FROM ({USER_TEXT})) r USING (representative_id)
               WHERE n.sample_id <> n.representative_id ORDER BY n.method, n.similarity, n.sample_id LIMIT 10"""
            ).to_arrow_table()
            if excluded
            else None
        )
    for method, values in figures.items():
        context.log.info(
            f"{method}: {values['clusters']:,} clusters, {values['non_representatives']:,} non-representatives; queried {values['shards_queried']}"
        )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": table.num_rows,
            "methods": dg.MetadataValue.json(methods),
            "samples_excluded": excluded,  # non-representatives under any method
            "execution": "ray" if execution.on_ray else "local",
            "config": dg.MetadataValue.json(config.model_dump()),
            **{
                f"{method}_{key}": dg.MetadataValue.json(value) if isinstance(value, list) else value
                for method, v in figures.items()
                for key, value in v.items()
            },
            "examples": dg.MetadataValue.md(_markdown(examples)),
        },
    )


def _markdown(table) -> str:
    rows = table.to_pylist() if table is not None else []
    if not rows:
        return "(no near duplicates)"
    clean = [{k: str(v).replace("|", "\\|").replace("\n", " ") for k, v in row.items()} for row in rows]
    header = list(clean[0])
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r[h] for h in header) + " |" for r in clean)])
