"""Fakes for the quality scorers: deterministic digit log-probabilities and rubric answers derived
from the prompt text, with fault injection. The real engine is tested in test_quality_real.py."""

import hashlib
import json
import math

from mig_assets.core.llm.backends import truncate_by_chars
from mig_assets.resources import Scorer

TOKEN_OFFSET = 1000  # fake token ids: ord(char) + offset, so ids from the tokenizer are recognizable


def _hash(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


class ScriptedScorerBackend:
    """``script`` maps a substring of the prompt to an action for the prompts containing it:
    ``"error"`` (backend error: None), ``"no_digits"`` (no label among the log-probabilities), a
    list (judge: successive answers per attempt, the last repeating) or a string (judge: the answer).
    ``constant``: every prompt gets uniform digit log-probabilities (expected score 3.5) and every
    rubric answer is 3/3. ``crash_after``: raise on that call (an injected crash, counting from 1)."""

    model_id = "fake-scorer"

    def __init__(self, script: dict | None = None, constant: bool = False, crash_after: int = 0, multi_token_digits: bool = False):
        self.script = script or {}
        self.constant = constant
        self.crash_after = crash_after
        self.multi_token_digits = multi_token_digits
        self.calls: list[int] = []  # prompts per call
        self.labels_seen: list[dict] = []

    def tokenize(self, text: str) -> list[int]:
        if self.multi_token_digits and text.isdigit():
            return [TOKEN_OFFSET, TOKEN_OFFSET + ord(text)]  # "▁" + digit
        return [TOKEN_OFFSET + ord(char) for char in text]

    def _call(self, n: int) -> None:
        self.calls.append(n)
        if self.crash_after and len(self.calls) >= self.crash_after:
            raise RuntimeError(f"injected crash on call {len(self.calls)}")

    def _action(self, text: str):
        return next((action for key, action in self.script.items() if key in text), None)

    def first_token_logprobs(self, prompts, labels, top_k=20):
        self._call(len(prompts))
        self.labels_seen.append(dict(labels))
        out = []
        for prompt in prompts:
            text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            action = self._action(text)
            if action == "error":
                out.append(None)
            elif action == "no_digits":
                out.append({})
            elif self.constant:
                out.append({digit: math.log(1 / 6) for digit in labels})
            else:
                h = _hash(text)
                out.append({digit: -((h >> (4 * i)) % 16) / 3 - 1.0 for i, digit in enumerate(labels)})
        return out

    def complete(self, conversations, schema, sampling):
        self._call(len(conversations))
        out = []
        for messages in conversations:
            text = messages[-1]["content"]
            action = self._action(text)
            if action == "error":
                out.append(None)
            elif isinstance(action, list):
                attempt = 0 if sampling.temperature == 0 else sampling.seed - 1  # seeds 2, 3, ... on retries
                out.append(action[min(attempt, len(action) - 1)])
            elif isinstance(action, str):
                out.append(action)
            elif self.constant:
                out.append(json.dumps({"complexity": 3, "quality": 3}))
            else:
                h = _hash(text)
                out.append(json.dumps({"complexity": 1 + h % 6, "quality": 1 + (h >> 8) % 6}))
        return out

    def truncate(self, text, max_tokens):
        return truncate_by_chars(text, max_tokens)

    def close(self):
        pass


class FakeScorer(Scorer):
    """A Scorer whose LLM is a ScriptedScorerBackend (plain-data config: private attributes do not
    survive dg.materialize, so the backend is built inside the run)."""

    backend: str = "logprob"
    model: str = "fake-scorer"
    script_json: str = "{}"
    constant: bool = False

    def llm(self):
        if self._backend is None:
            self._backend = ScriptedScorerBackend(json.loads(self.script_json), constant=self.constant)
        return self._backend
