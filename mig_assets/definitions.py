"""The one ``Definitions`` of the project, loaded by ``dagster dev`` and the ``mig-assets`` CLI.

Loads in seconds without a GPU: no model library is imported at module level anywhere.
"""

import dagster as dg

from mig_assets.pool.assets import raw_pool
from mig_assets.pool.jobs import ingest_job
from mig_assets.pool.sensors import incoming_shards_sensor
from mig_assets.resources import Warehouse, mig_home_setting


def build_resources() -> dict:
    return {"warehouse": Warehouse(mig_home=mig_home_setting())}


defs = dg.Definitions(
    assets=[raw_pool],
    jobs=[ingest_job],
    sensors=[incoming_shards_sensor],
    resources=build_resources(),
)
