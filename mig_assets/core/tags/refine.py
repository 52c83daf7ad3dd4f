"""LLM refinement of the knowledge tree (spec §1.5, Clio-style): a :class:`~mig_assets.core.tags.naming.TreeRefiner`
over any :class:`~mig_assets.core.llm.backends.LLMBackend` (the tagger's vLLM engine or OpenAI-compatible server).

Every step is one batch of JSON-schema constrained prompts at temperature 0:
  summarize: each K-Means cluster of children gets a parent name and a one-sentence description;
  deduplicate: parents whose names normalise to the same canonical tag are merged [R] (the LLM's
      part is the naming: synonymous clusters come back under one name);
  reassign: each child picks its parent among its shortlist, the answer constrained by an enum
      of the shortlist's positions, so nothing outside it can be chosen;
  rename: each final parent is named again from its final children.
An answer that fails to parse keeps the deterministic choice (the central child's name, the
K-Means parent) and is counted in :attr:`LLMTreeRefiner.fallbacks`, never invented. Answers are
cached by prompt (``cache``), so rebuilding the same tree asks the model nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from mig_assets.core.llm.backends import LLMBackend, Sampling
from mig_assets.core.tagging.canonical import normalize_tag
from mig_assets.core.tags.naming import CentralRefiner, Concept

REFINE_PROMPT_VERSION = "tree-refine-v1"
CHILDREN_SHOWN = 12
SYSTEM = "You organise fine-grained knowledge and skill tags of instruction data into a taxonomy. Answer in JSON only."
NAME_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 2, "maxLength": 60},
        "description": {"type": "string", "maxLength": 200},
    },
    "required": ["name", "description"],
    "additionalProperties": False,
}


def _children_text(children: Sequence[Concept]) -> str:
    shown = sorted(children, key=lambda c: (-c.centrality, c.name))[:CHILDREN_SHOWN]
    more = f" (and {len(children) - len(shown)} more)" if len(children) > len(shown) else ""
    return "; ".join(c.name for c in shown) + more


class PromptCache:
    """Answers by prompt hash in one JSON-lines file, appended as answers arrive."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self.answers: dict[str, str] = {}
        if self.path and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                self.answers[entry["key"]] = entry["answer"]

    @staticmethod
    def key(model_id: str, messages: list[dict], schema: dict, sampling: Sampling) -> str:
        """What an answer depends on: the model, the prompt (its version and text), the schema and the sampling."""
        parts = [REFINE_PROMPT_VERSION, model_id, messages, schema, sampling.key()]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def add(self, entries: dict[str, str]) -> None:
        self.answers.update(entries)
        if self.path and entries:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.writelines(json.dumps({"key": k, "answer": v}) + "\n" for k, v in entries.items())


class LLMTreeRefiner:
    """:class:`TreeRefiner` asking ``backend``; see the module notes for what each step asks."""

    def __init__(self, backend: LLMBackend, *, sampling: Sampling = Sampling(max_tokens=96), cache_path: Path | None = None):
        self.backend = backend
        self.sampling = sampling
        self.cache = PromptCache(cache_path)
        self.fallbacks = 0
        self.asked = 0
        self._central = CentralRefiner()

    def _ask(self, conversations: list[list[dict]], schema: dict) -> list[dict | None]:
        keys = [PromptCache.key(self.backend.model_id, c, schema, self.sampling) for c in conversations]
        todo = {k: c for k, c in zip(keys, conversations) if k not in self.cache.answers}
        if todo:
            answers = self.backend.complete(list(todo.values()), schema, self.sampling)
            self.asked += len(todo)
            self.cache.add({k: a for k, a in zip(todo, answers) if a is not None})
        parsed = []
        for key in keys:
            try:
                parsed.append(json.loads(self.cache.answers[key]))
            except (KeyError, json.JSONDecodeError):
                parsed.append(None)
        return parsed

    def _names(self, level: int, clusters: Sequence[Sequence[Concept]]) -> list[tuple[str, str]]:
        kind = "tags" if level == 1 else "concepts"
        conversations = [
            [
                {"role": "system", "content": SYSTEM},
                {
                    "role": "user",
                    "content": f"These {kind} belong together: {_children_text(children)}.\n"
                    "Name the broader concept that covers all of them (2 to 5 lower-case words) and describe it in one sentence. "
                    'Answer as {"name": ..., "description": ...}.',
                },
            ]
            for children in clusters
        ]
        names = []
        for children, answer in zip(clusters, self._ask(conversations, NAME_SCHEMA)):
            name = normalize_tag(answer.get("name", "")) if isinstance(answer, dict) else None
            if not name or not isinstance(answer, dict):
                self.fallbacks += 1
                names.append(self._central.summarize(level, [children])[0])
            else:
                names.append((name, str(answer.get("description", "")).strip()))
        return names

    def summarize(self, level: int, clusters: Sequence[Sequence[Concept]]) -> list[tuple[str, str]]:
        return self._names(level, clusters)

    def deduplicate(self, level: int, parents: Sequence[tuple[str, str]]) -> list[list[int]]:
        groups: dict[str, list[int]] = {}
        for j, (name, _) in enumerate(parents):
            groups.setdefault(normalize_tag(name) or name, []).append(j)
        return list(groups.values())

    def reassign(self, level, children, candidates, parents) -> list[int]:
        conversations, schemas = [], []
        for child, shortlist in zip(children, candidates):
            options = "\n".join(f"{i + 1}. {parents[p][0]}: {parents[p][1]}" for i, p in enumerate(shortlist))
            conversations.append(
                [
                    {"role": "system", "content": SYSTEM},
                    {
                        "role": "user",
                        "content": f"Which parent concept fits '{child.name}' best?\n{options}\nAnswer as {{\"choice\": N}} with N the number of the option.",
                    },
                ]
            )
            schemas.append(len(shortlist))
        choices = [int(shortlist[0]) for shortlist in candidates]
        # one batch per shortlist length: the enum of allowed answers is part of the schema
        for size in sorted(set(schemas)):
            rows = [i for i, n in enumerate(schemas) if n == size]
            schema = {
                "type": "object",
                "properties": {"choice": {"type": "integer", "enum": list(range(1, size + 1))}},
                "required": ["choice"],
                "additionalProperties": False,
            }
            for i, answer in zip(rows, self._ask([conversations[i] for i in rows], schema)):
                choice = answer.get("choice") if isinstance(answer, dict) else None
                if isinstance(choice, int) and 1 <= choice <= size:
                    choices[i] = int(candidates[i][choice - 1])
                else:
                    self.fallbacks += 1
        return choices

    def rename(self, level, parents, children) -> list[tuple[str, str]]:
        """Final names, kept unique within the level: a repeated name gets its central child's name."""
        named, seen = [], set()
        for (name, description), kids in zip(self._names(level, children), children):
            if name in seen:
                name = f"{name} ({self._central.summarize(level, [kids])[0][0]})"
            seen.add(name)
            named.append((name, description))
        return named
