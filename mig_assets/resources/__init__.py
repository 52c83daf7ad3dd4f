"""Dagster resources: thin configurable wrappers; heavy imports happen inside methods."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mig_assets.resources.embedder import Embedder
from mig_assets.resources.execution import Execution
from mig_assets.resources.scorer import Scorer
from mig_assets.resources.tagger import Tagger
from mig_assets.resources.warehouse import Warehouse

if TYPE_CHECKING:
    from mig_assets.settings import Settings


def build_resources(settings: Settings) -> dict:
    """Every resource of the project, configured from the project settings (the one place)."""
    return {
        "warehouse": Warehouse(mig_home=str(settings.home)),
        "tagger": Tagger(**settings.section("tagger"), model_cache=settings.model_cache),
        "scorer": Scorer(**settings.section("scorer"), model_cache=settings.model_cache),
        "embedder": Embedder(**settings.section("embedder")),
        "execution": Execution(**settings.section("execution")),
    }


__all__ = ["Embedder", "Execution", "Scorer", "Tagger", "Warehouse", "build_resources"]
