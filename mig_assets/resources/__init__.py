"""Dagster resources: thin configurable wrappers; heavy imports happen inside methods."""

from mig_assets.resources.embedder import Embedder, embedder_from_env
from mig_assets.resources.scorer import Scorer, scorer_from_env
from mig_assets.resources.execution import Execution, execution_from_env
from mig_assets.resources.tagger import Tagger, tagger_from_env
from mig_assets.resources.warehouse import Warehouse, mig_home_setting

__all__ = ["Embedder", "Execution", "execution_from_env", "Scorer", "scorer_from_env", "Tagger", "Warehouse", "embedder_from_env", "mig_home_setting", "tagger_from_env"]
