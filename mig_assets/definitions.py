"""The one ``Definitions`` of the project, loaded by ``dagster dev``, ``dg`` and the ``mig-assets`` CLI.

Everything configurable comes from the project settings (``MIG_HOME/mig.yaml``, see
``mig_assets.settings``), read once when this module loads. Loads in seconds without a GPU: no
model library is imported at module level anywhere.
"""

import dagster as dg

from mig_assets.defs.contamination.assets import build_contamination, decontamination_config
from mig_assets.defs.embeddings.assets import sample_embeddings, tag_embeddings
from mig_assets.defs.near_duplicates.assets import near_duplicates
from mig_assets.defs.pool.assets import raw_pool
from mig_assets.defs.pool.jobs import ingest_job
from mig_assets.defs.pool.sensors import incoming_shards_sensor
from mig_assets.defs.quality.assets import build_quality_scores
from mig_assets.defs.selection.assets import build_selection_asset, selection_specs
from mig_assets.defs.selection.comparison import selection_comparison
from mig_assets.defs.selection.label_graph import label_graph
from mig_assets.defs.steering.assets import selection_stability, selection_sweep
from mig_assets.defs.tagging.assets import build_atomic_tags, tag_vocabulary
from mig_assets.defs.tree.assets import knowledge_tree, target_profile
from mig_assets.orchestration.automation import automation_sensor
from mig_assets.resources import build_resources
from mig_assets.settings import current_settings

settings = current_settings()
resources = build_resources(settings)
# the tagger and scorer settings decide these assets' code versions: a change shows them stale
atomic_tags = build_atomic_tags(resources["tagger"].version())
quality_scores = build_quality_scores(resources["scorer"].version())
# the benchmark files' bytes, methods and thresholds decide contamination's code version
contamination = build_contamination(decontamination_config(settings))
selection_assets = [build_selection_asset(spec) for spec in selection_specs()]
# GPU work in one process: one engine per run, and a run may cover many shards (single-run backfill)
tag_job = dg.define_asset_job(
    "tag_job",
    selection=[atomic_tags, sample_embeddings, quality_scores],
    executor_def=dg.in_process_executor,
    description="Tag, embed and score shards; launch over many partitions to load each model once.",
)
# near_duplicates before the selections: they leave out the copies it finds
global_assets = [tag_vocabulary, tag_embeddings, near_duplicates, label_graph, knowledge_tree, target_profile, *selection_assets]
reselect_job = dg.define_asset_job(
    "reselect_job",
    selection=global_assets,
    executor_def=dg.in_process_executor,
    description="Rebuild the vocabulary, embeddings and graph from the cached per-shard results and re-run every selection.",
)

compare_job = dg.define_asset_job(
    "compare_job",
    selection=[selection_comparison],
    executor_def=dg.in_process_executor,
    description="Every selection method at one budget (default 10%), measured side by side.",
)

decontaminate_job = dg.define_asset_job(
    "decontaminate_job",
    selection=[contamination],
    executor_def=dg.in_process_executor,
    description="Check shards against the registered benchmark files (mig-assets decontaminate); one index per run.",
)

defs = dg.Definitions(
    # on demand: the comparison, the what-if sweep and the stability report
    assets=[
        raw_pool,
        atomic_tags,
        sample_embeddings,
        quality_scores,
        contamination,
        *global_assets,
        selection_comparison,
        selection_sweep,
        selection_stability,
    ],
    jobs=[ingest_job, tag_job, reselect_job, compare_job, decontaminate_job],
    sensors=[incoming_shards_sensor, automation_sensor],
    resources=resources,
)
