"""Versioned scorer prompts: Deita's templates (read by digit log-probabilities) and the judge's
rubric (answered in JSON matching ``JUDGE_SCHEMA``). A prompt's fingerprint is part of every
cache key and of the scorer's code version."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class ScorePrompt:
    """A versioned scorer prompt. ``kind`` "logprob": ``complexity`` and ``quality`` templates read
    by digit log-probabilities, sent as plain text (``chat=False``, how Deita's scorers were trained)
    or as a user message through the chat template. ``kind`` "judge": one rubric message per turn
    answered in JSON matching ``schema``."""

    version: str
    kind: str
    complexity: str = ""  # {instruction}
    quality: str = ""  # {instruction}, {output}
    judge: str = ""  # {instruction}, {output}
    system: str = ""
    schema: dict | None = None
    chat: bool = False

    def _wrap(self, text: str) -> list[dict] | str:
        if not self.chat:
            return text
        return ([{"role": "system", "content": self.system}] if self.system else []) + [{"role": "user", "content": text}]

    def complexity_prompt(self, query: str) -> list[dict] | str:
        return self._wrap(self.complexity.format(instruction=query))

    def quality_prompt(self, query: str, response: str) -> list[dict] | str:
        return self._wrap(self.quality.format(instruction=query, output=response))

    def judge_messages(self, query: str, response: str) -> list[dict]:
        user = [{"role": "user", "content": self.judge.format(instruction=query, output=response)}]
        return ([{"role": "system", "content": self.system}] if self.system else []) + user

    @property
    def fingerprint(self) -> str:
        """Changes whenever a template, the schema or the format changes: part of every cache key."""
        text = json.dumps([self.version, self.kind, self.complexity, self.quality, self.judge, self.system, self.schema, self.chat], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# Deita's templates, verbatim (hkust-nlp/deita, scorer code): its scorers were trained on exactly
# these strings, whitespace included.
DEITA_COMPLEXITY = "You are a helpful assistant. Please identify the complexity score of the following user query. \n##Query: {instruction}  \n##Complexity: "
DEITA_QUALITY = (
    "You are a helpful assistant. Please identify the quality score of the Response corresponding to the "
    "Question. \n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: "
)
_SCORE_1_6 = {"type": "integer", "minimum": 1, "maximum": 6}
JUDGE_SCHEMA = {
    "type": "object",
    "properties": {"complexity": _SCORE_1_6, "quality": _SCORE_1_6},
    "required": ["complexity", "quality"],
    "additionalProperties": False,
}

PROMPTS = {
    # Deita's scorers (and base models): the bare template, no chat template.
    "deita-v1": ScorePrompt(version="deita-v1", kind="logprob", complexity=DEITA_COMPLEXITY, quality=DEITA_QUALITY),
    # the same templates as a user message, for instruct models without a trained scorer head.
    # Measured on SmolLM2-135M-Instruct: ~1% of the first-token mass on the digits, against 20-60% raw.
    "deita-chat-v1": ScorePrompt(version="deita-chat-v1", kind="logprob", complexity=DEITA_COMPLEXITY, quality=DEITA_QUALITY, chat=True),
    "judge-v1": ScorePrompt(
        version="judge-v1",
        kind="judge",
        system="You rate instruction-tuning samples. Return only JSON matching the schema, no prose.",
        judge=(
            "Rate the sample below on two scales from 1 to 6.\n"
            "complexity (of the query): 1 trivial (a greeting, one fact); 2 simple; 3 moderate (several steps "
            "or some domain knowledge); 4 involved; 5 hard (expert knowledge, several constraints); 6 very hard "
            "(research level, many interacting constraints).\n"
            "quality (of the response to that query): 1 wrong, harmful or off-topic; 2 poor; 3 partly correct "
            "or incomplete; 4 correct but plain; 5 correct, complete and clear; 6 excellent (correct, complete, "
            "well explained and well formatted).\n"
            'Respond in the JSON format {{"complexity": int, "quality": int}}.\n'
            "Query:\n<<<\n{instruction}\n>>>\nResponse:\n<<<\n{output}\n>>>"
        ),
        schema=JUDGE_SCHEMA,
        chat=True,
    ),
}
DEFAULT_PROMPTS = {"logprob": "deita-v1", "judge": "judge-v1"}
