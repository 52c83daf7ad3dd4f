"""Dagster resources: thin configurable wrappers; heavy imports happen inside methods."""

from mig_assets.resources.warehouse import Warehouse, mig_home_setting

__all__ = ["Warehouse", "mig_home_setting"]
