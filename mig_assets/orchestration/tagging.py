"""Tagging samples with the ``Tagger`` and ``Execution`` resources, locally or on Ray: the one path
``atomic_tags`` (per shard) and ``target_profile`` (the target set) share.

Local: :func:`tag_through_cache` tags what the tag cache lacks with the tagger's model. Ray: first
:func:`tag_on_ray` does those texts on the cluster, in one pipeline for all the files of the run (so
each actor loads its model once); then :func:`tag_through_cache` assembles the samples from the cache
with the same code and a backend that refuses work. Either way the answers land in the tagger's one
cache (``Tagger.tag_cache``), keyed by the text tagged, so a text is never tagged twice.
"""

from collections.abc import Callable

from mig_assets.core.execution.pipeline import NoLocalModel, ShardFigures, ShardTexts, tag_shards_on_ray
from mig_assets.core.store.catalog import WarehouseLayout
from mig_assets.core.tagging.rows import TaggingStats, tag_samples
from mig_assets.resources import Execution, Tagger


def tag_on_ray(
    files: ShardTexts,
    tagger: Tagger,
    execution: Execution,
    layout: WarehouseLayout,
    *,
    include_response: bool,
    log: Callable[[str], None],
) -> tuple[dict[str, ShardFigures], dict]:
    """Fill the tag cache on the Ray cluster for ``files`` (name -> (Parquet file of ``sample_id`` and
    ``messages`` relative to the warehouse, its ``(sample_id, text_hash)`` pairs in file order), the
    tagger reading the user turns (and the assistant's with ``include_response``)); returns each
    file's share of the work and the cluster's metadata."""
    cluster_name = execution.connect(log)
    log(f"tagging {len(files)} file(s) on Ray: {cluster_name}")
    factory = tagger.backend_factory(
        tensor_parallel_size=execution.gpus_per_actor if execution.gpus_per_actor > 1 else 0,
        gpu_share=1.0 / execution.actors_per_gpu if execution.gpus_per_actor == 1 else 1.0,
    )
    figures, cluster = tag_shards_on_ray(
        files,
        factory,
        tagger.tag_settings,
        tagger.tag_cache(layout.warehouse_dir),
        include_response=include_response,
        settings=execution.settings(layout),
        log=log,
    )
    return figures, execution.cluster_metadata(cluster, cluster_name)


def tag_through_cache(
    samples: list[tuple[str, str]],
    tagger: Tagger,
    layout: WarehouseLayout,
    *,
    ray_figures: ShardFigures | None = None,
    log: Callable[[str], None],
) -> tuple[dict[str, dict], TaggingStats, float]:
    """Every ``(sample_id, text)``'s tagging result through the tagger's cache, with its statistics and
    the engine's load time: the tagger's model does what the cache lacks, or, after :func:`tag_on_ray`
    (``ray_figures``: these samples' share of it), nothing, and the cluster's figures replace the
    (empty) local ones."""
    settings = tagger.tag_settings
    results, stats = tag_samples(
        samples,
        tagger.llm() if ray_figures is None else NoLocalModel(),
        settings.prompt,
        tagger.tag_cache(layout.warehouse_dir),
        sampling=settings.sampling,
        max_input_tokens=settings.max_input_tokens,
        batch_size=tagger.batch_size,
        max_attempts=settings.max_attempts,
        retry_temperature=settings.retry_temperature,
        log=log,
    )
    if ray_figures is None:
        return results, stats, getattr(tagger.llm(), "load_seconds", 0.0)
    return results, ray_figures.apply(stats), ray_figures.load_seconds
