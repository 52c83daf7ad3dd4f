"""Target profiles for aligned TAGS selection (spec §1.9): a target set of questions grounded on the
knowledge tree and smoothed into a distribution over its leaves.

A target sample contributes one unit of mass, split evenly over its grounded tags' leaves (the
pool's samples are weighted the same way by :func:`~mig_assets.core.tags.problem.leaf_weights`), so the counts c_ℓ
are "target samples' worth" of mass per leaf; t = (c + α)/(Σc + αL) (:func:`target_distribution`).

Samples without tags (a tagger that only imports annotations, a target file without any) can be
grounded by text instead [R]: the user turns' embedding goes, whole, to the leaf whose centroid is
nearest by cosine, when that cosine reaches ``text_threshold``. Tag embeddings and text embeddings
come from the same model, but a question is less similar to a concept name than a tag is, hence a
lower default threshold than the tag grounding's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mig_assets.core.ingest.readers import ReadStats, read_records
from mig_assets.core.ingest.records import RecordError, canonicalize
from mig_assets.core.store.layout import is_supported
from mig_assets.core.tagging.rows import query_text
from mig_assets.core.tags.grounding import ground_tags
from mig_assets.core.tags.tree import KnowledgeTree

DEFAULT_TAG_THRESHOLD = 0.65
DEFAULT_TEXT_THRESHOLD = 0.3


@dataclass
class TargetSample:
    sample_id: str
    source_file: str
    line_no: int
    text: str  # what a tagger reads: the user turns
    imported_tags: list[str] | None
    messages: list[dict] = field(default_factory=list)  # the canonical messages ({role, content}), as raw_pool stores them


@dataclass
class TargetRead:
    samples: list[TargetSample] = field(default_factory=list)
    rows_read: int = 0
    filtered_out: int = 0
    duplicates: int = 0
    bad: list[str] = field(default_factory=list)  # "file:line: field: reason"


def target_files(path: str | Path) -> list[Path]:
    """The files of a target set: ``path`` itself, or the supported files under a folder (sorted)."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_supported(p) and not p.name.startswith("."))
        if not files:
            raise FileNotFoundError(f"target folder {path} holds no .jsonl, .json or .parquet file")
        return files
    if not path.exists():
        raise FileNotFoundError(f"target file {path} does not exist")
    return [path]


def read_target(path: str | Path, filter_field: str = "", filter_values: Sequence[str] = ()) -> TargetRead:
    """Read a target set in any format the ingestion reads, keeping the records whose
    ``filter_field`` (a top-level field, e.g. MT-Bench's ``category``) is one of ``filter_values``
    (all records when ``filter_field`` is empty). Exact duplicates count once; records that cannot
    be read are reported with file, line and field, never silently dropped."""
    result = TargetRead()
    wanted = {str(v) for v in filter_values}
    seen: set[str] = set()
    for file in target_files(path):
        for raw in read_records(file, ReadStats()):
            result.rows_read += 1
            where = f"{file}:{raw.line_no}"
            if raw.error is not None:
                result.bad.append(f"{where}: {raw.error}")
                continue
            if filter_field:
                value = raw.value.get(filter_field) if isinstance(raw.value, dict) else None
                if value is None:
                    result.bad.append(f"{where}: {filter_field}: missing (the target filter needs it)")
                    continue
                if str(value) not in wanted:
                    result.filtered_out += 1
                    continue
            try:
                record = canonicalize(raw.value)
            except RecordError as exc:
                result.bad.append(f"{where}: {exc}")
                continue
            if record.sample_id in seen:
                result.duplicates += 1
                continue
            seen.add(record.sample_id)
            messages = [{"role": role, "content": content} for role, content in record.messages]
            result.samples.append(TargetSample(record.sample_id, str(file), raw.line_no, query_text(messages), record.imported_tags, messages))
    return result


@dataclass
class TargetGrounding:
    leaf_counts: np.ndarray  # (L,) target mass per leaf
    sample_leaves: list[list[int]]  # leaves each target sample reached (empty: unassigned)
    methods: list[str]  # per sample: "tags", "text" or "unassigned"
    tag_counts: dict[str, int]  # distinct tags: known to the tree / grounded to the nearest leaf / unassigned


def ground_target(
    tree: KnowledgeTree,
    sample_tags: Sequence[Sequence[str] | None],
    *,
    embed_tags: Callable[[list[str]], np.ndarray] | None = None,
    text_vectors: np.ndarray | None = None,
    tag_threshold: float = DEFAULT_TAG_THRESHOLD,
    text_threshold: float = DEFAULT_TEXT_THRESHOLD,
) -> TargetGrounding:
    """Leaf mass of a target set. Sample i with grounded tags g_1..g_n adds 1/n to each g's leaf
    (tags unseen by the tree are embedded with ``embed_tags`` and grounded by :func:`ground_tags`);
    a sample with no grounded tag adds 1 to the leaf nearest its text vector (row i of
    ``text_vectors``) if that cosine is ≥ ``text_threshold``, and is otherwise unassigned."""
    vocabulary = sorted({t for tags in sample_tags if tags for t in tags})
    leaf_ids = tree.leaf_of(vocabulary)  # -1: a tag the tree has not seen
    unseen = np.flatnonzero(leaf_ids < 0)
    if len(unseen) and embed_tags is not None:
        names = [vocabulary[i] for i in unseen]
        leaf_ids[unseen] = ground_tags(tree, names, embed_tags(names), threshold=tag_threshold).leaf_ids
    tag_counts = {
        "known": len(vocabulary) - len(unseen),
        "nearest": int((leaf_ids[unseen] >= 0).sum()),
        "unassigned": int((leaf_ids < 0).sum()),
    }
    leaf_of_tag = dict(zip(vocabulary, leaf_ids.tolist()))

    counts = np.zeros(tree.n_leaves)
    sample_leaves: list[list[int]] = []
    methods: list[str] = []
    leaf_centroids = tree.centroids[: tree.n_leaves]
    for i, tags in enumerate(sample_tags):
        leaves = [leaf_of_tag[t] for t in (tags or []) if leaf_of_tag.get(t, -1) >= 0]
        if leaves:
            for leaf, n in Counter(leaves).items():
                counts[leaf] += n / len(leaves)
            sample_leaves.append(sorted(set(leaves)))
            methods.append("tags")
            continue
        if text_vectors is not None:
            vector = np.asarray(text_vectors[i], dtype=np.float64)
            norm = np.linalg.norm(vector)
            if norm > 0:
                cosines = leaf_centroids @ (vector / norm)
                best = int(np.argmax(cosines))  # ties to the lowest leaf
                if cosines[best] >= text_threshold:
                    counts[best] += 1.0
                    sample_leaves.append([best])
                    methods.append("text")
                    continue
        sample_leaves.append([])
        methods.append("unassigned")
    return TargetGrounding(counts, sample_leaves, methods, tag_counts)
