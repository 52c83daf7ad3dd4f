"""Versioned tagging prompts, their JSON schemas, and the parsing contract for model output.

Every model answer ends as ``ok`` (valid JSON matching the schema), ``repaired`` (usable after a
documented repair: code fences, think blocks, prose around the JSON, a truncated tail, stray
non-string items) or ``failed`` (with a reason). A failed sample is never given default tags.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from mig_assets.core.llm.answers import load_answer_json
from mig_assets.core.tagging.canonical import filter_llm_tags

MAX_TAGS = 12


@dataclass(frozen=True)
class TagPrompt:
    version: str
    system: str
    instruction: str  # formatted with {query}
    schema: dict

    def messages(self, query: str) -> list[dict]:
        user = [{"role": "user", "content": self.instruction.format(query=query)}]
        return ([{"role": "system", "content": self.system}] if self.system else []) + user

    @property
    def fingerprint(self) -> str:
        """Changes whenever the prompt text or schema changes: part of every cache key."""
        text = json.dumps([self.version, self.system, self.instruction, self.schema], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# Lowercase noun phrases: the pattern keeps small models from drifting into prose or repetition.
_TAG_STRING = {"type": "string", "pattern": "^[a-z][a-z0-9 +#.-]{1,40}$"}

PROMPTS = {
    "atomic-v1": TagPrompt(
        version="atomic-v1",
        system="",
        instruction=(
            "Identify the knowledge concepts and skills needed to answer the user query below, as short "
            'lowercase tags. Respond in the JSON format {{"tags": [str]}}.\nQuery: {query}'
        ),
        schema={
            "type": "object",
            "properties": {"tags": {"type": "array", "minItems": 1, "maxItems": 8, "items": _TAG_STRING}},
            "required": ["tags"],
        },
    ),
    "instag-v1": TagPrompt(
        version="instag-v1",
        system="",
        instruction=(
            "Please identify tags of user intentions in the following user query and provide an explanation "
            'for each tag. Please respond in the JSON format {{"tag": str, "explanation": str}}.\nQuery: {query}'
        ),
        schema={
            "type": "array",
            "minItems": 1,
            "maxItems": 5,
            "items": {
                "type": "object",
                "properties": {"tag": _TAG_STRING, "explanation": {"type": "string", "maxLength": 80}},
                "required": ["tag", "explanation"],
            },
        },
    ),
}
DEFAULT_PROMPT = "atomic-v1"


@dataclass(frozen=True)
class ParsedTags:
    status: str  # ok | repaired | failed
    tags: list[str]  # canonical tags (empty when failed)
    surface_tags: list[str]  # as the model wrote them
    reason: str = ""


def parse_tag_output(text: str | None) -> ParsedTags:
    """Apply the parsing contract to one model answer."""
    if text is None or not text.strip():
        return ParsedTags("failed", [], [], "empty output")
    value, repairs = load_answer_json(text)
    if value is None:
        return ParsedTags("failed", [], [], f"not JSON: {text.strip()[:80]!r}")
    surface = _surface_tags(value)
    if surface is None:
        return ParsedTags("failed", [], [], "JSON without a `tags` list")
    strings = [s for s in surface if isinstance(s, str)]
    if len(strings) != len(surface):
        repairs.append("non-string items dropped")
    tags = filter_llm_tags(strings, max_tags=MAX_TAGS).tags
    if not tags:
        return ParsedTags("failed", [], strings, "no specific tag (empty, or only generic or junk tags)")
    return ParsedTags("repaired" if repairs else "ok", tags, strings, "; ".join(repairs))


def _surface_tags(value) -> list | None:
    tags = value.get("tags") if isinstance(value, dict) else value if isinstance(value, list) else None
    if not isinstance(tags, list):
        return None
    return [item.get("tag") if isinstance(item, dict) else item for item in tags]
