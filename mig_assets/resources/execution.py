"""The ``Execution`` resource: where the heavy per-shard work runs, ``local`` (in the step, the
default) or ``ray`` (a Ray cluster: an existing one by address, or a local one started for the run).

Same assets, same outputs, same caches: switching is configuration. On Ray the connection goes
through ``dagster-ray`` (its ``LocalRay`` resource, pointed at ``address``), opened on the first
shard that needs the cluster and closed when the step ends. ray and dagster-ray are imported only
then, so the definitions load without them.
"""

import contextlib
import functools
import os
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from mig_assets.core.execution.pipeline import RaySettings
from mig_assets.core.execution.storage import Storage
from mig_assets.core.store.catalog import WarehouseLayout

MODES = ("local", "ray")
# passed to the workers' runtime environment when set here (a remote cluster does not inherit them)
WORKER_ENV = ("HF_HUB_OFFLINE", "VLLM_CPU_KVCACHE_SPACE", "OMP_NUM_THREADS")


class Execution(dg.ConfigurableResource):
    """Where ``atomic_tags`` and ``sample_embeddings`` do their model work."""

    mode: str = Field(default="local", description="local (in the Dagster step) or ray")
    address: str = Field(
        default="",
        description="Ray cluster: '' starts a local one for the run (or joins $RAY_ADDRESS), 'auto' joins the one on "
        "this machine, 'ray://head:10001' a remote one through Ray Client",
    )
    num_cpus: int = Field(default=0, description="CPUs of a local cluster started for the run (0: all)")
    object_store_mb: int = Field(default=512, description="object store of a local cluster started for the run (0: Ray's default, 30% of RAM)")
    num_actors: int = Field(default=1, description="model actors: one model (vLLM engine or encoder) each")
    cpus_per_actor: float = Field(default=1.0, description="Ray CPUs reserved per actor")
    omp_threads_per_actor: int = Field(default=0, description="torch/OpenMP threads per actor (0: as many as its CPUs)")
    gpus_per_actor: int = Field(default=0, description="GPUs per actor (0: CPU; >1: vLLM tensor parallel across them)")
    actors_per_gpu: int = Field(default=1, description="actors sharing one GPU (gpus_per_actor=1): each gets 1/N of it")
    batch_size: int = Field(default=256, description="rows per actor call and per cache file (a killed actor redoes at most one)")
    max_restarts: int = Field(default=3, description="restarts of a dead actor")
    max_task_retries: int = Field(default=3, description="retries of a task whose actor died")
    storage: str = Field(
        default="",
        description="the warehouse as the workers see it: '' the local folder (same machine or a shared mount at the "
        "same path), or a pyarrow URI (s3://bucket/prefix, gs://..., file:///...) mirrored around each shard",
    )
    _session: Any = PrivateAttr(default=None)  # dagster-ray resource context (None when not ours)
    _connected: bool = PrivateAttr(default=False)
    _init_context: Any = PrivateAttr(default=None)
    _connect_seconds: float = PrivateAttr(default=0.0)

    @property
    def on_ray(self) -> bool:
        if self.mode not in MODES:
            raise ValueError(f"unknown execution mode {self.mode!r}; expected one of {', '.join(MODES)}")
        return self.mode == "ray"

    @property
    def gpus_per_actor_share(self) -> float:
        """Ray's num_gpus per actor."""
        if self.gpus_per_actor <= 0:
            return 0.0
        return 1.0 / max(self.actors_per_gpu, 1) if self.gpus_per_actor == 1 else float(self.gpus_per_actor)

    def settings(self, layout: WarehouseLayout) -> RaySettings:
        return RaySettings(
            storage=Storage(local_root=str(layout.warehouse_dir.resolve()), uri=self.storage),
            num_actors=self.num_actors,
            cpus_per_actor=self.cpus_per_actor,
            gpus_per_actor=self.gpus_per_actor_share,
            batch_size=self.batch_size,
            max_restarts=self.max_restarts,
            max_task_retries=self.max_task_retries,
            omp_threads_per_actor=self.omp_threads_per_actor,
        )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._init_context = context

    def connect(self, log=None) -> str:
        """Connect to the cluster once per step (through dagster-ray); returns a description of it."""
        import time

        import ray

        if self._connected:
            return self.describe()
        started = time.perf_counter()
        if not self.address and not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
            cpus = self.num_cpus or os.cpu_count() or 1
            if self.num_actors * self.cpus_per_actor >= cpus:
                raise ValueError(
                    f"{self.num_actors} actor(s) x {self.cpus_per_actor:g} CPU leave none of the local cluster's {cpus} CPUs "
                    "to the read tasks, and the pipeline would wait forever: lower cpus_per_actor and use "
                    "omp_threads_per_actor to give the actors more threads"
                )
        if ray.is_initialized():  # a session this process already holds (a notebook, a test): used, not closed
            (log or print)("using the Ray session this process already holds")
        else:
            resource = _ray_resource_class()(
                address=self.address,
                ray_init_options=self._init_options(),
                env_vars=self._worker_env(),
                data_execution_options={"verbose_progress": False, "use_polars": False},
            )
            stack = contextlib.ExitStack()
            stack.enter_context(resource.yield_for_execution(self._init_context or _LogOnly()))
            self._session = stack
        self._connected = True
        self._connect_seconds = time.perf_counter() - started
        return self.describe()

    def describe(self) -> str:
        import ray

        resources = ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
        return f"{len(ray.nodes())} node(s), {cpus:g} CPU, {gpus:g} GPU ({self.address or 'local cluster'})"

    def cluster_metadata(self, cluster, cluster_name: str) -> dict:
        """The cluster figures an asset adds to its metadata on Ray."""
        figures = cluster.metadata(self.num_actors)
        per_actor = figures.pop("ray_rows_per_second_per_actor")
        connect_seconds, self._connect_seconds = self._connect_seconds, 0.0  # counted once, on the first shard
        return {
            "execution": "ray",
            "ray_cluster": cluster_name,
            "ray_connect_seconds": round(connect_seconds, 3),
            **figures,
            "ray_rows_per_second_per_actor": dg.MetadataValue.json(per_actor),
        }

    def _init_options(self) -> dict:
        if self.address:  # an existing cluster: its own settings (worker logs still stream back)
            return {}
        options: dict = {"include_dashboard": False, "log_to_driver": True}
        if self.num_cpus:
            options["num_cpus"] = self.num_cpus
        if self.object_store_mb:
            options["object_store_memory"] = self.object_store_mb * 1024 * 1024
        return options

    def _worker_env(self) -> dict[str, str]:
        return {name: os.environ[name] for name in WORKER_ENV if os.environ.get(name)}

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._session is not None:
            self._session.close()  # dagster-ray disconnects (and stops a local cluster it started)
            self._session = None
        self._connected = False


class _LogOnly:
    """The part of a Dagster context dagster-ray's lifecycle uses, for calls outside a step."""

    def __init__(self):
        import logging

        self.log = logging.getLogger("mig_assets.execution")


@functools.lru_cache(maxsize=1)
def _ray_resource_class():
    """dagster-ray's ``LocalRay`` pointed at a configurable address (imported only when used)."""
    from dagster_ray import LocalRay

    class AddressedRay(LocalRay):
        address: str = ""

        @property
        def ray_address(self):  # None: ray.init starts a local cluster (or joins $RAY_ADDRESS)
            return self.address or None

        @property
        def name(self) -> str:
            return f"Ray cluster at {self.address}" if self.address else "local Ray cluster"

    return AddressedRay
