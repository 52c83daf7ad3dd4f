"""Seeded synthetic pools in the MIG reference schema (the recipe of ``shared/specs/mig.md`` §4).

- L labels (drawn from a vocabulary file, or named "label 00042"), with 64-d clustered embeddings:
  clusters of about five labels, unit centres plus noise 0.28/√64, so that τ = 0.9 gives each label
  about five neighbours (itself included);
- Zipf label popularity (exponent 0.9), 1–7 labels per record;
- about 1% of records without an annotation, 20% with one tag outside the valid list,
  15% with two dialog turns; quality ~ U[1, 6], complexity ~ U[1, 5] per turn.

Writes DIR/pool.jsonl, DIR/valid_tags.json and the label embeddings DIR/labels.labels.json +
DIR/labels.emb.npy (so ``--label-embeddings DIR/labels``).

    python benchmarks/mig_synthetic.py DIR --records 50000 --labels 2000 [--seed 0] [--vocabulary FILE]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

EMBEDDING_DIM = 64
LABELS_PER_CLUSTER = 5
CLUSTER_NOISE = 0.28
ZIPF_EXPONENT = 0.9
MAX_LABELS_PER_RECORD = 7
NO_ANNOTATION_RATE = 0.01
INVALID_TAG_RATE = 0.2
TWO_TURN_RATE = 0.15
N_INVALID_TAGS = 50


@dataclass(frozen=True)
class SyntheticPool:
    pool: Path
    valid_tags: Path
    label_embeddings_prefix: Path


def synthetic_paths(directory: Path) -> SyntheticPool:
    return SyntheticPool(directory / "pool.jsonl", directory / "valid_tags.json", directory / "labels")


def _label_names(rng: np.random.Generator, n_labels: int, vocabulary: Path | None) -> list[str]:
    if vocabulary is None:
        return [f"label {i:05d}" for i in range(n_labels)]
    words = json.loads(vocabulary.read_bytes())
    if n_labels > len(words):
        raise ValueError(f"{vocabulary} has {len(words)} tags, fewer than the {n_labels} labels asked for")
    return [words[i] for i in sorted(rng.choice(len(words), n_labels, replace=False).tolist())]


def _clustered_embeddings(rng: np.random.Generator, n_labels: int) -> np.ndarray:
    n_clusters = max(1, n_labels // LABELS_PER_CLUSTER)
    centres = rng.normal(size=(n_clusters, EMBEDDING_DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.normal(size=(n_labels, EMBEDDING_DIM)) * (CLUSTER_NOISE / np.sqrt(EMBEDDING_DIM))
    vectors = centres[rng.integers(n_clusters, size=n_labels)] + noise
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _json_numbers(values: list[float]) -> str:
    return ", ".join(map(repr, values))


def generate(directory: str | Path, n_records: int, n_labels: int, seed: int = 0, vocabulary: Path | None = None) -> SyntheticPool:
    """Write a synthetic pool and its label embeddings into ``directory``; same arguments, same bytes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = synthetic_paths(directory)
    rng = np.random.default_rng(seed)

    names = _label_names(rng, n_labels, vocabulary)
    np.save(f"{paths.label_embeddings_prefix}.emb.npy", _clustered_embeddings(rng, n_labels))
    Path(f"{paths.label_embeddings_prefix}.labels.json").write_bytes(orjson.dumps(names))
    paths.valid_tags.write_bytes(orjson.dumps(names))

    popularity = (rng.permutation(n_labels) + 1.0) ** -ZIPF_EXPONENT
    counts = rng.integers(1, MAX_LABELS_PER_RECORD + 1, size=n_records)
    labels = rng.choice(n_labels, size=int(counts.sum()), p=popularity / popularity.sum()).tolist()
    starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
    annotated = (rng.random(n_records) >= NO_ANNOTATION_RATE).tolist()
    invalid_tag = np.where(rng.random(n_records) < INVALID_TAG_RATE, rng.integers(N_INVALID_TAGS, size=n_records), -1)
    invalid_position = rng.integers(0, counts + 1).tolist()
    turns = np.where(rng.random(n_records) < TWO_TURN_RATE, 2, 1).tolist()
    quality = rng.uniform(1, 6, size=(n_records, 2)).tolist()
    complexity = rng.uniform(1, 5, size=(n_records, 2)).tolist()

    tag_json = [orjson.dumps(name).decode() for name in names]
    invalid_json = [orjson.dumps(f"zz invalid tag {i}").decode() for i in range(N_INVALID_TAGS)]
    with open(paths.pool, "w", encoding="utf-8") as out:
        for i, invalid in enumerate(invalid_tag.tolist()):
            dialog = (
                f'{{"dialogs": [{{"role": "user", "content": "synthetic question {i}"}}, '
                f'{{"role": "assistant", "content": "synthetic answer {i}"}}], '
                f'"source": ["synthetic"], "_id": "s{i:07d}"'
            )
            if not annotated[i]:
                out.write(dialog + "}\n")
                continue
            tags = [tag_json[j] for j in labels[starts[i] : starts[i + 1]]]
            if invalid >= 0:
                tags.insert(invalid_position[i], invalid_json[invalid])
            n_turns = turns[i]
            out.write(
                f'{dialog}, "annotation": {{"instag": {{"content": [{", ".join(tags)}], '
                f'"versions": [{", ".join(["100"] * len(tags))}]}}, "dialog_round": {n_turns}, '
                f'"deita": {{"quality_scores": [{_json_numbers(quality[i][:n_turns])}], '
                f'"complexity_scores": [{_json_numbers(complexity[i][:n_turns])}]}}}}}}\n'
            )
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--labels", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocabulary", type=Path, help="JSON list of tag names to draw the labels from")
    args = parser.parse_args()
    generate(args.directory, args.records, args.labels, args.seed, args.vocabulary)


if __name__ == "__main__":
    main()
