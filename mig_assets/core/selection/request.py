"""One selection run's request: the method, its budget, every method parameter and the seed.

Built in one place (:func:`build_request`) from the flat settings a user writes (a spec's
``params``, the Dagster run config, the CLI); :func:`~mig_assets.core.selection.run.run_selection`
takes it whole. The defaults are the core's own: :class:`MigParams` for MIG, :class:`TagsParams`
for TAGS, this module's dataclass for the rest; the Dagster config and the CLI flags read them
from :data:`SELECTION_DEFAULTS`, never restate them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mig_assets.core.mig.problem import MigParams
from mig_assets.core.tags.params import TagsParams

BASELINES = ("random", "top_quality", "deita", "instag", "kcenter")
EMBEDDING_METHODS = ("deita", "kcenter")  # the baselines that read the sample embeddings
METHODS = ("mig", "tags", *BASELINES)
BUDGET_FIELDS = ("budget_count", "budget_fraction", "budget_tokens")
MIG_FIELDS = ("prop_weight", "norm", "phi", "phi_a", "phi_b", "phi_alpha", "gain")  # the graph's tau is label_graph's
REQUEST_FIELDS = ("gamma", "level_weights", "diversity_threshold", "seed", "exclude_contaminated", "exclude_near_duplicates")
TAGS_FIELDS = ("phi_a", "phi_b", "align", "lam", "eps", "kl_cap", "kl_cap_start", "kl_cap_decay")


@dataclass(frozen=True)
class Budget:
    """Exactly one of a count, a fraction of the pool, or a token budget (checked when resolved)."""

    count: int | None = None
    fraction: float | None = None
    tokens: int | None = None

    def describe(self) -> str:
        kind, value = next((k, v) for k, v in vars(self).items() if v is not None)
        return f"{kind}={value}"


@dataclass(frozen=True)
class SelectionRequest:
    """What to select: ``method`` within ``budget``, with MIG's and TAGS's parameters, the TAGS path
    vectors' upward decay ``gamma`` and level weights β (``level_weights``), Deita's cosine
    ``diversity_threshold``, the ``seed`` of the random and k-center baselines, and whether samples the
    ``contamination`` and ``near_duplicates`` assets flag are left out first. ``settings`` is the
    flat mapping it was built from, recorded with the selection."""

    method: str
    budget: Budget
    mig: MigParams = field(default_factory=MigParams)
    tags: TagsParams = field(default_factory=TagsParams)
    gamma: float = 0.5
    level_weights: str = "uniform"
    diversity_threshold: float = 0.9
    seed: int = 42
    exclude_contaminated: bool = True  # curation before selection (core/curation/exclusions.py)
    exclude_near_duplicates: bool = True
    settings: dict = field(default_factory=dict)

    def replace(self, **changes) -> SelectionRequest:
        return dataclasses.replace(self, **changes)


def _defaults() -> dict:
    mig, tags, request = MigParams(), TagsParams(), SelectionRequest("mig", Budget())
    return (
        {name: getattr(mig, name) for name in MIG_FIELDS}
        | {name: getattr(tags, name) for name in TAGS_FIELDS if name not in MIG_FIELDS}
        | {name: getattr(request, name) for name in REQUEST_FIELDS}
    )


# one flat default per setting (phi_a and phi_b are shared by MIG and TAGS and agree in both)
SELECTION_DEFAULTS = _defaults()


def build_request(method: str, settings: dict) -> SelectionRequest:
    """The request for ``method`` from flat ``settings`` (keys of :data:`SELECTION_DEFAULTS` plus
    ``budget_count`` / ``budget_fraction`` / ``budget_tokens``); a missing key takes its default."""
    unknown = set(settings) - set(SELECTION_DEFAULTS) - set(BUDGET_FIELDS)
    if unknown:
        raise ValueError(f"unknown selection settings {sorted(unknown)}; expected some of {sorted(SELECTION_DEFAULTS)}")
    values = SELECTION_DEFAULTS | settings
    return SelectionRequest(
        method=method,
        budget=Budget(*(settings.get(name) for name in BUDGET_FIELDS)),
        mig=MigParams(**{name: values[name] for name in MIG_FIELDS}),
        tags=TagsParams(**{name: values[name] for name in TAGS_FIELDS}),
        **{name: values[name] for name in REQUEST_FIELDS},
        settings=dict(settings),
    )
