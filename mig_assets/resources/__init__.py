"""Dagster resources: thin configurable wrappers; heavy imports happen inside methods."""

from mig_assets.resources.embedder import Embedder, embedder_from_env
from mig_assets.resources.tagger import Tagger, tagger_from_env
from mig_assets.resources.warehouse import Warehouse, mig_home_setting

__all__ = ["Embedder", "Tagger", "Warehouse", "embedder_from_env", "mig_home_setting", "tagger_from_env"]
