"""What made the data: every materialization carries the project settings in effect.

The record is the effective settings of this process (file, environment overrides, defaults; API
keys only by the name of their variable) and their fingerprint, so an auditor can tell from any
materialization, or any selection manifest, which configuration produced it.
"""

import dagster as dg

from mig_assets.settings import current_settings


def settings_record() -> dict:
    settings = current_settings()
    return {"fingerprint": settings.fingerprint(), **settings.record()}


def record_settings(context: dg.AssetExecutionContext) -> None:
    """Add the settings to the materialization(s) of this step (every partition of a range)."""
    record = settings_record()
    context.add_asset_metadata({"settings": dg.MetadataValue.json(record), "settings_fingerprint": record["fingerprint"]})
