"""The one ``Definitions`` of the project, loaded by ``dagster dev`` and the ``mig-assets`` CLI.

Loads in seconds without a GPU: no model library is imported at module level anywhere.
"""

import dagster as dg

from mig_assets.automation import automation_sensor

from mig_assets.embeddings.assets import sample_embeddings, tag_embeddings
from mig_assets.pool.assets import raw_pool
from mig_assets.pool.jobs import ingest_job
from mig_assets.pool.sensors import incoming_shards_sensor
from mig_assets.resources import Warehouse, embedder_from_env, mig_home_setting, tagger_from_env
from mig_assets.selection.assets import build_selection_asset, label_graph, selection_specs
from mig_assets.tagging.assets import build_atomic_tags, tag_vocabulary
from mig_assets.tree.assets import knowledge_tree, target_profile

tagger = tagger_from_env()


def build_resources() -> dict:
    return {"warehouse": Warehouse(mig_home=mig_home_setting()), "embedder": embedder_from_env(), "tagger": tagger}


atomic_tags = build_atomic_tags(tagger.version())
selection_assets = [build_selection_asset(spec) for spec in selection_specs()]
# GPU work in one process: one engine per run, and a run may cover many shards (single-run backfill)
tag_job = dg.define_asset_job(
    "tag_job", selection=[atomic_tags, sample_embeddings], executor_def=dg.in_process_executor,
    description="Tag and embed shards; launch over many partitions to load each model once.",
)
global_assets = [tag_vocabulary, tag_embeddings, label_graph, knowledge_tree, target_profile, *selection_assets]
reselect_job = dg.define_asset_job(
    "reselect_job", selection=global_assets, executor_def=dg.in_process_executor,
    description="Rebuild the vocabulary, embeddings and graph from the cached per-shard results and re-run every selection.",
)

defs = dg.Definitions(
    assets=[raw_pool, atomic_tags, sample_embeddings, *global_assets],
    jobs=[ingest_job, tag_job, reselect_job],
    sensors=[incoming_shards_sensor, automation_sensor],
    resources=build_resources(),
)
