"""The selection assets, one per named spec (an asset factory), each a thin step over core/selection:
config -> :class:`SelectionRequest` -> inputs -> :func:`run_selection` -> :func:`persist_selection`."""

import time

import dagster as dg
import pyarrow as pa
from pydantic import Field

from mig_assets.core.selection.audit import Provenance, persist_selection
from mig_assets.core.selection.constraint_spec import constraint_report
from mig_assets.core.selection.inputs import load_request_inputs
from mig_assets.core.selection.lineage import INPUTS_DIR
from mig_assets.core.selection.request import EMBEDDING_METHODS, SELECTION_DEFAULTS, SelectionRequest, build_request
from mig_assets.core.selection.run import run_selection
from mig_assets.core.selection.specs import SelectionSpec, load_specs
from mig_assets.core.selection.stability import steering_inputs
from mig_assets.defs.selection.metadata import selection_metadata
from mig_assets.orchestration.automation import re_select
from mig_assets.orchestration.partitions import pool_shards
from mig_assets.orchestration.provenance import latest_shard_materializations, record_settings, settings_record
from mig_assets.resources import Warehouse
from mig_assets.settings import current_settings

SELECTION_CODE_VERSION = "1"
DEFAULT = SELECTION_DEFAULTS  # every default below is the core's (core/selection/request.py)


class SelectionConfig(dg.Config):
    """Budget (exactly one of count, fraction, tokens) and method parameters; defaults come from the spec,
    then from the core's MigParams, TagsParams and SelectionRequest."""

    budget_count: int | None = None
    budget_fraction: float | None = None
    budget_tokens: int | None = None
    # MIG
    prop_weight: float = Field(default=DEFAULT["prop_weight"], description="MIG: scale of the neighbour weights in the propagation")
    norm: bool = Field(default=DEFAULT["norm"], description="MIG: split a sample's score across its labels")
    phi: str = Field(default=DEFAULT["phi"], description="MIG: information function, pow (x + phi_a)^phi_b or exp 1 - exp(-phi_alpha x)")
    phi_a: float = Field(default=DEFAULT["phi_a"], description="MIG and TAGS: phi's offset a")
    phi_b: float = Field(default=DEFAULT["phi_b"], description="MIG and TAGS: phi's exponent b")
    phi_alpha: float = Field(default=DEFAULT["phi_alpha"], description="MIG exp phi: rate alpha")
    gain: str = Field(default=DEFAULT["gain"], description="MIG: gradient (the reference's first-order gain) or exact")
    seed: int = Field(default=DEFAULT["seed"], description="random and k-center baselines: the seed")
    # TAGS
    gamma: float = Field(default=DEFAULT["gamma"], description="TAGS: upward decay of a leaf's mass to its ancestors")
    level_weights: str = Field(default=DEFAULT["level_weights"], description="TAGS: beta per level, uniform (1) or equal (1/|level|)")
    align: str = Field(default=DEFAULT["align"], description="TAGS alignment to target_profile: none | penalty | hard | quota")
    lam: float = Field(default=DEFAULT["lam"], description="TAGS penalty: F(S) = E(S)/E(pool) - lam * KL(target || S)")
    eps: float = Field(default=DEFAULT["eps"], description="TAGS: smoothing of the selection's leaf distribution")
    kl_cap: float = Field(default=DEFAULT["kl_cap"], description="TAGS hard: final KL cap")
    kl_cap_start: float = Field(default=DEFAULT["kl_cap_start"], description="TAGS hard: KL cap at the first pick")
    kl_cap_decay: float = Field(default=DEFAULT["kl_cap_decay"], description="TAGS hard: share of the budget over which the cap decays")
    # baselines
    diversity_threshold: float = Field(default=DEFAULT["diversity_threshold"], description="deita: skip a sample whose cosine to a selected one exceeds this")
    # curation before selection (core/curation/exclusions.py)
    exclude_contaminated: bool = Field(default=DEFAULT["exclude_contaminated"], description="leave out samples the contamination asset flagged")
    exclude_near_duplicates: bool = Field(
        default=DEFAULT["exclude_near_duplicates"], description="leave out near-duplicates that are not their cluster's representative"
    )

    def request(self, method: str) -> SelectionRequest:
        """The one plain request of this run (the config, flattened, is what the version records)."""
        return build_request(method, self.model_dump())


def config_class_for(spec: SelectionSpec) -> type[SelectionConfig]:
    """A SelectionConfig subclass whose defaults are the spec's budget, params and seed."""
    defaults = spec.settings()
    unknown = set(defaults) - set(SelectionConfig.model_fields)
    if unknown:
        raise ValueError(f"selection {spec.name!r}: unknown parameters {sorted(unknown)}")
    annotations = {name: SelectionConfig.model_fields[name].annotation for name in defaults}
    return type(f"{spec.name.title().replace('_', '')}Config", (SelectionConfig,), {"__annotations__": annotations, **defaults})


def build_selection_asset(spec: SelectionSpec) -> dg.AssetsDefinition:
    all_shards = dg.AllPartitionMapping()
    deps = [
        dg.AssetDep("raw_pool", partition_mapping=all_shards),
        dg.AssetDep("atomic_tags", partition_mapping=all_shards),
        dg.AssetDep("quality_scores", partition_mapping=all_shards),  # the sample weights
        dg.AssetDep("near_duplicates"),  # non-representative near copies are left out (exclude_near_duplicates)
    ]
    if spec.method == "mig":
        deps.append(dg.AssetDep("label_graph"))
    if spec.method == "tags":
        deps += [dg.AssetDep("knowledge_tree"), dg.AssetDep("target_profile")]  # the target: to align, or to report KL
    if spec.method in EMBEDDING_METHODS:
        deps.append(dg.AssetDep("sample_embeddings", partition_mapping=all_shards))
    config_class = config_class_for(spec)

    @dg.asset(
        name=spec.name,
        deps=deps,
        group_name="selection",
        kinds={"duckdb", "parquet"},
        code_version=SELECTION_CODE_VERSION,
        pool="duckdb",
        automation_condition=re_select,
        tags={"mig/method": spec.method},
        description=spec.description or f"{spec.method} selection ({', '.join(f'{k}={v}' for k, v in spec.budget.items())})",
    )
    def selection_asset(context: dg.AssetExecutionContext, config: config_class, warehouse: Warehouse) -> dg.MaterializeResult:  # type: ignore[valid-type]
        record_settings(context)
        result = materialize_selection(context, spec.name, config.request(spec.method), warehouse, spec)
        # the pool's tables are gone with the call, but Arrow's allocator keeps their memory (about 400 MB
        # at 939,000 samples): a process that goes on to the next run (`mig-assets run`) would start from it
        pa.default_memory_pool().release_unused()
        return result

    return selection_asset


def materialize_selection(
    context: dg.AssetExecutionContext, name: str, request: SelectionRequest, warehouse: Warehouse, spec: SelectionSpec | None = None
) -> dg.MaterializeResult:
    """Load what ``request`` reads, select (under the spec's constraints and warm start, if any),
    persist the outcome once, describe it."""
    started = time.perf_counter()
    shard_order = context.instance.get_dynamic_partitions(pool_shards.name)
    with warehouse.connect() as con:
        inputs = load_request_inputs(con, warehouse.layout, shard_order, request)
        constraints, warm = (
            (None, None) if spec is None else steering_inputs(con, warehouse.layout.warehouse_dir, name, spec.constraints, spec.stability, inputs)
        )
    loaded = time.perf_counter()
    if inputs.lineage is not None:
        inputs.lineage.set_aside(warehouse.layout.warehouse_dir / INPUTS_DIR)  # out of memory while the greedy runs
        inputs.lineage.sort_in_background()  # for the input snapshot, on the second core while the greedy runs
    outcome = run_selection(request, inputs, constraints=constraints, warm=warm)
    if spec is not None:
        outcome.steering = spec.steering()
    selected = time.perf_counter()
    with warehouse.connect() as con:
        saved = persist_selection(con, warehouse.layout, name, request, inputs, outcome, provenance(context, request.method, shard_order))
    context.log.info(
        f"{name} v{saved.version}: {len(saved.sample_ids):,} of {len(inputs.pool.sample_ids):,} samples "
        f"(load {loaded - started:.2f}s, select {selected - loaded:.2f}s, persist {time.perf_counter() - selected:.2f}s)"
    )
    steering = {}
    if constraints is not None:
        steering["constraints"] = dg.MetadataValue.json({"spec": outcome.steering["constraints"], "selection": constraint_report(constraints, outcome.order)})
    if outcome.stability is not None:
        steering["stability"] = dg.MetadataValue.json(outcome.stability)
    return dg.MaterializeResult(
        metadata=selection_metadata(request, inputs, outcome, saved)
        | steering
        | {"seconds_select": round(selected - loaded, 3), "seconds_total": round(time.perf_counter() - started, 3)}
    )


METHOD_INPUTS = {"mig": ("tag_embeddings", "label_graph"), "tags": ("tag_embeddings", "knowledge_tree", "target_profile")}


def provenance(context: dg.AssetExecutionContext, method: str, shard_order: list[str]) -> Provenance:
    """The run, the latest materialization of each upstream asset of ``method`` and the registered shards."""
    instance = context.instance
    upstream = {}
    for key in ("raw_pool", "atomic_tags", *METHOD_INPUTS.get(method, ())):
        event = instance.get_latest_materialization_event(dg.AssetKey(key))
        if event is not None and event.asset_materialization is not None:
            upstream[key] = {"run_id": event.run_id, "data_version": event.asset_materialization.tags.get("dagster/data_version")}
    return Provenance(
        run_id=context.run.run_id,
        code_version=SELECTION_CODE_VERSION,
        upstream=upstream,
        pool_shards=list(shard_order),
        settings=settings_record(),
        shard_facts=lambda shards: latest_shard_materializations(instance, shards),
    )


def selection_specs() -> list[SelectionSpec]:
    """Specs from the file the setting ``selections.path`` names, else the packaged ``selections.yaml``."""
    return load_specs(current_settings().selections_path)
