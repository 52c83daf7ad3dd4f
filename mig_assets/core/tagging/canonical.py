"""Canonical tags: one spelling per concept, and a policy per tag source saying how much to touch them.

Two policies (:data:`TAG_POLICIES`), chosen by the tag source:

- ``as_written`` (imported annotations, e.g. InsTag's): the tags exactly as the annotation wrote
  them, order and repeats kept. This is the MIG reference's semantics: its valid-tag file alone
  decides which tags are labels, so no built-in list may drop or rename one.
- ``normalized`` (tags an LLM wrote): :func:`normalize_tag`, then the junk filter
  (:func:`junk_reason`); every filtered tag keeps its surface form and a reason.

``normalize_tag`` (``../shared/specs/tags.md`` §1.3): Unicode NFKC, lower case, ``_ - / \\ |`` as
spaces, quotes and edge punctuation stripped (but not the ``#``/``+`` of ``c#``, ``c++`` nor the
dot of ``.net``), whitespace collapsed; then the **head word only** (the last word) is lemmatized
as a noun with lemminflect (a maintained English lemmatizer with a dictionary of irregular and
Latin/Greek plurals: criteria -> criterion, analyses -> analysis, lives -> life). What a lemmatizer
alone gets wrong is handled on purpose:

- words that are their own lemma in its dictionary are kept: news, series, species, physics, data;
- words it does not know that end in ``s`` go through its suffix rules (apps -> app, nfts -> nft), except those ending
  in -os, -ops, -ss, -us, -is (macos, devops, redis: names, not plurals), words of at most three
  letters (aws, gps, ios) and :data:`PROPER_NOUNS` (kubernetes, and plural-looking dictionary words
  that are names: windows, pandas);
- an all-capitals acronym with a plural ``s`` loses the ``s`` (APIs -> api, GPUs -> gpu);
- a head containing anything but letters (c#, c++, f#, .net, node.js, vue.js, web3, 3d) is kept;
- words ending in ``-ics`` are kept (fields: statistics, graphics, analytics, robotics);
- a tag with a preposition or a conjunction (``game of thrones``, ``pros and cons``) is kept: its head is not its
  last word, and the words after the preposition are often a title or a name.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

from lemminflect import getLemma
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

# Bump when a rule below changes what a surface form becomes: atomic_tags then shows stale, and its
# re-run re-derives every sample's tags from the cached answers (no model call).
TAG_RULES_VERSION = "2"
TAG_POLICIES = {
    "as_written": "imported annotations: tags exactly as written (order and repeats kept); the valid-tag file alone decides membership",
    "normalized": "LLM tags: NFKC, lower case, separators, edge punctuation, lemmatized head word (lemminflect), generic tags dropped, junk filter",
}
# Tags that say nothing about the knowledge or skill a sample needs (InsTag's and TAGS' advice); LLM tags only.
GENERIC_TAGS = frozenset(
    {
        "question answering",
        "question",
        "answer",
        "helpfulness",
        "instruction following",
        "instruction",
        "general",
        "general knowledge",
        "user",
        "assistant",
        "task",
        "request",
        "information",
        "query",
        "response",
        "conversation",
        "chat",
        "text",
        "other",
        "none",
        "misc",
        "user intention",
        "user request",
        "user query",
    }
)
# Names a lemmatizer takes for plurals of dictionary words.
PROPER_NOUNS = frozenset({"kubernetes", "windows", "pandas", "jenkins", "rails", "sims", "simpsons", "beatles", "avengers", "olympics"})
PREPOSITIONS_AND_CONJUNCTIONS = frozenset({"of", "on", "in", "for", "with", "to", "from", "by", "at", "as", "vs", "versus", "and", "or"})
# Phrases a model writes around or instead of tags (compared after normalization).
BOILERPLATE = frozenset(
    {
        "tag",
        "tags",
        "atomic tag",
        "keyword",
        "keywords",
        "label",
        "labels",
        "json",
        "list",
        "output",
        "example",
        "here are the tag",
        "here is the tag",
        "the tag",
        "tag list",
        "sure",
        "okay",
        "ok",
        "n a",
        "na",
        "null",
        "as an ai",
        "as an ai language model",
        "i'm sorry",
        "i am sorry",
        "i cannot",
        "i can't",
        "sorry",
        "yes",
        "no",
        "unknown",
        "string",
        "specific tag",
        "knowledge tag",
        "skill tag",
        "your tag",
        "tag1",
        "...",
        "etc",
    }
)
# scikit-learn's English stop words (the Glasgow list) less the content words it contains, which are real
# one-word tags ("computer", "system", "fire") or parts of them ("well being"), plus a few discourse words.
STOP_WORDS = ENGLISH_STOP_WORDS - {
    "computer",
    "system",
    "fire",
    "bill",
    "interest",
    "mill",
    "detail",
    "describe",
    "call",
    "amount",
    "part",
    "side",
    "top",
    "bottom",
    "front",
    "back",
    "name",
    "show",
    "find",
    "found",
    "move",
    "full",
    "fill",
    "thick",
    "thin",
    "hundred",
    "cry",
    "well",
    "being",
} | {"finally", "furthermore", "moreover", "like", "dear"}  # discourse words small models emit as tags
MAX_TAG_CHARS = 64
MAX_TAG_WORDS = 8  # spec §1.3 step 4: longer "tags" are sentences
MIN_COPIED_WORDS = 5  # a tag of at least this many words found verbatim in the prompt was copied, not abstracted
_SEPARATORS = re.compile(r"[_\-/\\|]+")
_SPACES = re.compile(r"\s+")
_LEADING = "\"'`,;:!?()[]{}<>*#~ "  # a leading "." is kept (.net)
_TRAILING = "\"'`.,;:!?()[]{}<>*~ "  # a trailing "#" or "+" is kept (c#, c++)
_NUMERIC = re.compile(r"^(?=.*\d)[\d\s.,:%+\-*/x=$€£]+$")
_PLACEHOLDER = re.compile(r"^(list|item|tag|keyword|label|category|topic|skill|knowledge|example|concept)s?\s*\d+$")
_LEADING_ARTICLE = re.compile(r"^(the|an|a)\s+(?=[^\W\d_]{2})", re.IGNORECASE)  # not the "a" of "a b test"
_WORD_PARTS = re.compile(r"[\s.]+")  # words, and the dotted parts of list.reverse.reverse
_LETTERS = re.compile(r"^[a-z]+$")
_ACRONYM_PLURAL = re.compile(r"^[A-Z]{2,}s$")
_OOV_KEPT_ENDINGS = ("os", "ops", "ss", "us", "is")


def lemmatize_head(word: str) -> str:
    """The noun lemma of a lower-case head word, or the word itself when it is protected (module doc)."""
    if not _LETTERS.match(word) or len(word) <= 3 or word.endswith("ics") or word in PROPER_NOUNS:
        return word
    known = getLemma(word, upos="NOUN", lemmatize_oov=False)
    if known:  # in lemminflect's dictionary: its lemma, unless the word is a lemma itself (news, series)
        return word if word in known else known[0]
    if not word.endswith("s") or word.endswith(_OOV_KEPT_ENDINGS):  # not a plural; macos, devops, redis: names
        return word
    return getLemma(word, upos="NOUN", lemmatize_oov=True)[0]  # lemminflect's suffix rules: apps -> app


def clean_tag(tag: str, lower: bool = True) -> str:
    """NFKC, lower case, a leading article dropped ("the cold war"; not before a one-letter word, nor in
    "a/b test"), separators as spaces, quotes and edge punctuation stripped, whitespace collapsed."""
    text = _LEADING_ARTICLE.sub("", unicodedata.normalize("NFKC", tag).lstrip(_LEADING))
    text = _SPACES.sub(" ", _SEPARATORS.sub(" ", text.lower() if lower else text))
    text = text.lstrip(_LEADING).rstrip(_TRAILING)
    return _SPACES.sub(" ", text).strip()


def normalize_with_reason(tag: str) -> tuple[str | None, str | None]:
    """(canonical form of an LLM ``tag``, None), or (None, why it has none: empty, too long, generic)."""
    cased = clean_tag(tag, lower=False)
    text = cased.lower()
    if not text:
        return None, "empty"
    if len(text) > MAX_TAG_CHARS:
        return None, f"longer than {MAX_TAG_CHARS} characters"
    words = text.split(" ")
    if _ACRONYM_PLURAL.match(cased.rsplit(" ", 1)[-1]):  # APIs, GPUs, NFTs: an acronym and a plural "s"
        words[-1] = words[-1][:-1]
    elif not PREPOSITIONS_AND_CONJUNCTIONS.intersection(words[1:]):
        words[-1] = lemmatize_head(words[-1])
    canonical = " ".join(words)
    return (None, "generic") if text in GENERIC_TAGS or canonical in GENERIC_TAGS else (canonical, None)


def normalize_tag(tag: str) -> str | None:
    """Canonical form of an LLM ``tag``; ``None`` when empty, generic or longer than MAX_TAG_CHARS."""
    return normalize_with_reason(tag)[0]


def _has_adjacent_repeat(words: list[str]) -> bool:
    """A word or a pair of words repeated back to back ("lighthouse lighthouse", "debt relief debt relief")."""
    return any(words[i] == words[i + 1] for i in range(len(words) - 1)) or any(words[i : i + 2] == words[i + 2 : i + 4] for i in range(len(words) - 3))


def junk_reason(canonical: str, prompt_text: str = "") -> str | None:
    """Why a normalized LLM tag is junk, or None: stop words only, a repeated word, numbers only, a
    numbered placeholder (``list1``), model boilerplate, more than MAX_TAG_WORDS words, or a span of at
    least MIN_COPIED_WORDS words copied from ``prompt_text`` (the text the tagger read)."""
    words = canonical.split(" ")
    if _NUMERIC.match(canonical):
        return "numeric only"
    if all(word in STOP_WORDS for word in words):
        return "stop words only"
    if _has_adjacent_repeat(_WORD_PARTS.split(canonical)):
        return "repeated words"
    if _PLACEHOLDER.match(canonical):
        return "numbered placeholder"
    if canonical in BOILERPLATE:
        return "model boilerplate"
    if len(words) > MAX_TAG_WORDS:
        return f"more than {MAX_TAG_WORDS} words"
    if len(words) >= MIN_COPIED_WORDS and prompt_text and canonical in clean_tag(prompt_text):
        return "copied from the prompt"
    return None


@dataclass
class FilteredTags:
    """One sample's LLM tags after the ``normalized`` policy: kept canonical tags (first occurrence
    order, no repeats) and every dropped surface form with its reason."""

    tags: list[str] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)  # {"surface": str, "reason": str}


def filter_llm_tags(surface: Iterable[str], prompt_text: str = "", max_tags: int | None = None) -> FilteredTags:
    """Apply the ``normalized`` policy to a sample's surface tags: normalize, drop generic and junk tags
    (each with its reason), merge repeats, keep at most ``max_tags`` (the rest dropped as "over the cap")."""
    out, seen = FilteredTags(), set()
    for tag in surface:
        canonical, reason = normalize_with_reason(tag)
        reason = reason or junk_reason(canonical or "", prompt_text)
        if reason is None and max_tags is not None and len(out.tags) >= max_tags and canonical not in seen:
            reason = f"over the cap of {max_tags} tags"
        if reason is not None:
            out.dropped.append({"surface": tag, "reason": reason})
        elif canonical is not None and canonical not in seen:
            seen.add(canonical)
            out.tags.append(canonical)
    return out


def as_written_tags(surface: Iterable) -> list[str]:
    """The ``as_written`` policy: the string tags exactly as the annotation wrote them, order and repeats kept."""
    return [tag for tag in surface if isinstance(tag, str)]


def canonical_for_policy(tag: str, policy: str) -> str | None:
    """The canonical tag of one surface form under ``policy`` (None: dropped as empty, generic or too long)."""
    if policy == "as_written":
        return tag
    if policy == "normalized":
        return normalize_tag(tag)
    raise ValueError(f"unknown tag policy {policy!r}; expected one of {', '.join(TAG_POLICIES)}")


def policy_of_backend(backend: str) -> str:
    """The policy for tags from a tagger backend: imported annotations as written, any LLM's normalized."""
    return "as_written" if backend == "imported" else "normalized"
