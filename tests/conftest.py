"""Shared fixtures: a temporary MIG_HOME, an ephemeral Dagster instance, the shared/ data."""

import socket
from pathlib import Path

import dagster as dg
import pytest

from mig_assets.core.store.layout import WarehouseLayout
from mig_assets.resources import Embedder, Execution, Scorer, Tagger, Warehouse

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = (REPO_ROOT.parent / "shared").resolve()  # resolved: what the project records of a path it reads (../shared may be a link)
REAL_DATA = SHARED / "data" / "real"
MIG_FIXTURES = SHARED / "fixtures" / "mig_reference"


@pytest.fixture
def layout(tmp_path, monkeypatch) -> WarehouseLayout:
    home = tmp_path / "mig_home"
    monkeypatch.setenv("MIG_HOME", str(home))
    return WarehouseLayout(home).ensure()


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


@pytest.fixture
def resources(layout) -> dict:
    return {
        "warehouse": Warehouse(mig_home=str(layout.home)),
        "embedder": Embedder(device="cpu"),
        "tagger": Tagger(),
        "execution": Execution(),
        "scorer": Scorer(),
    }


def materialize_shards(instance, resources, layout, paths, run_config=None) -> dict:
    """Register each file (already under pool/incoming) and materialize raw_pool; returns metadata by key."""
    from mig_assets.defs.pool.assets import raw_pool

    out = {}
    for path in paths:
        key = layout.shard_key(path)
        if key not in instance.get_dynamic_partitions("pool_shards"):
            instance.add_dynamic_partitions("pool_shards", [key])
        result = dg.materialize([raw_pool], partition_key=key, instance=instance, resources=resources, run_config=run_config)
        assert result.success
        mat = result.asset_materializations_for_node("raw_pool")[0]
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        out[key] = {"metadata": {k: v.value for k, v in mat.metadata.items()}, "checks": checks, "result": result}
    return out


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for servers the tests start."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
