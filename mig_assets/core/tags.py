"""Canonical tags: one spelling per concept, whatever the tagger or annotation wrote.

``normalize_tag`` maps a surface form to its canonical tag (or ``None`` for a generic tag):
Unicode NFKC, lower case, ``_``/``-``/``/`` as spaces, edge punctuation stripped, whitespace
collapsed, and the head word (the last one) made singular by a few English rules. The surface
forms seen for each canonical tag are kept by the callers, so nothing about the original is lost.
"""

from __future__ import annotations

import re
import unicodedata

# Tags that say nothing about the knowledge or skill a sample needs (InsTag's and TAGS' advice).
GENERIC_TAGS = frozenset(
    {
        "question answering", "question", "answer", "helpfulness", "instruction following",
        "instruction", "general", "general knowledge", "user", "assistant", "task", "request",
        "information", "query", "response", "conversation", "chat", "text", "other", "none", "misc",
        "user intention", "user request", "user query",
    }
)
MAX_TAG_CHARS = 64
_SEPARATORS = re.compile(r"[_\-/\\|]+")
_SPACES = re.compile(r"\s+")
_EDGE_PUNCT = "\"'`.,;:!?()[]{}<>*#~ "
# words whose final "s" is not a plural mark
_SINGULAR_S = ("ss", "us", "is", "ics", "ous", "as", "ys")


def singularize(word: str) -> str:
    """English plural -> singular for a head word, conservative: unknown shapes are left alone."""
    if len(word) <= 3 or not word.endswith("s") or word.endswith(_SINGULAR_S):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "ches", "shes", "zes")):
        return word[:-2]
    return word[:-1]


def normalize_tag(tag: str) -> str | None:
    """Canonical form of ``tag``; ``None`` when empty, generic or longer than MAX_TAG_CHARS."""
    text = unicodedata.normalize("NFKC", tag).lower()
    text = _SPACES.sub(" ", _SEPARATORS.sub(" ", text)).strip(_EDGE_PUNCT)
    text = _SPACES.sub(" ", text)
    if not text or len(text) > MAX_TAG_CHARS or text in GENERIC_TAGS:
        return None
    words = text.split(" ")
    words[-1] = singularize(words[-1])
    canonical = " ".join(words)
    return None if canonical in GENERIC_TAGS else canonical


def normalize_tags(tags: list[str]) -> list[str]:
    """Canonical tags of one sample, first occurrence order, duplicates removed."""
    seen: dict[str, None] = {}
    for tag in tags:
        canonical = normalize_tag(tag)
        if canonical is not None:
            seen.setdefault(canonical)
    return list(seen)
