"""Pools in the MIG reference JSONL schema: a fast reader with the reference loader's rules, and a writer
that copies selected input lines byte for byte.

The reader keeps only what selection needs (score, valid tags, where each line lies in the file),
never the parsed records, so a 939K-record pool fits in a few hundred MB.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
import orjson

_CHUNK_BYTES = 1 << 24


@dataclass(frozen=True)
class Pool:
    """The records a reference loader keeps (the filtered pool of spec §1), in file order.

    Sample i has score ``scores[i]`` and the valid tags
    ``[tags[j] for j in tag_ids[tag_indptr[i]:tag_indptr[i+1]]]`` (order and duplicates kept); its input line is
    bytes ``line_starts[i]:line_ends[i]`` of ``path`` (line terminator excluded).
    """

    path: Path
    line_numbers: np.ndarray  # (N,) int64, 1-based
    line_starts: np.ndarray  # (N,) int64 byte offsets
    line_ends: np.ndarray  # (N,) int64 byte offsets, just before the "\n"
    scores: np.ndarray  # (N,) float64 q_i
    tag_indptr: np.ndarray  # (N+1,) int64
    tag_ids: np.ndarray  # int64 indices into tags
    tags: list[str]  # tag vocabulary: the valid tags (or every tag seen), each once
    n_lines: int  # lines read, dropped records included

    def __len__(self) -> int:
        return len(self.scores)


def load_valid_tags(path: str | os.PathLike) -> frozenset[str]:
    """The valid-tag vocabulary: a JSON list of strings (the reference's ``configs/valid_tag_path.json``)."""
    tags = json.loads(Path(path).read_bytes())
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise ValueError(f"{path}: expected a JSON list of strings")
    return frozenset(tags)


def _chunks(path: Path) -> Iterator[list[bytes]]:
    """Successive runs of complete lines of the file, without their "\\n"."""
    pending = b""
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            yield lines
    if pending:
        yield [pending]


class _UnparseableLine(Exception):
    pass


def _loads(line: bytes):
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        # orjson rejects a few things Python's json accepts (NaN/Infinity, huge integers, lone
        # surrogates); the reference reads lines with json, so only fail if json fails too.
        try:
            return json.loads(line)
        except ValueError as error:
            raise _UnparseableLine(str(error)) from None


class _TagCoder:
    """Maps tags to integer ids, chunk by chunk; -1 for tags that are not valid labels (or not strings)."""

    def __init__(self, valid_tags: Collection[str] | None):
        self.open_vocabulary = valid_tags is None
        self.ids: dict[str, int] = {} if valid_tags is None else {tag: i for i, tag in enumerate(sorted(valid_tags))}

    def encode(self, tags: list) -> np.ndarray:
        try:
            distinct = set(tags)
        except TypeError:  # an unhashable tag (a list or an object) is never a valid label
            tags = [tag if type(tag) is str else None for tag in tags]
            distinct = set(tags)
        if self.open_vocabulary:
            for tag in sorted(tag for tag in distinct - self.ids.keys() if type(tag) is str):
                self.ids[tag] = len(self.ids)
        return np.fromiter(map(self.ids.get, tags, repeat(-1)), dtype=np.int64, count=len(tags))

    @property
    def tags(self) -> list[str]:
        return list(self.ids)


def read_pool(path: str | os.PathLike, valid_tags: Collection[str] | None = None) -> Pool:
    """Read a JSONL pool with the reference loader's rules.

    - A record is dropped when ``annotation``, ``annotation.instag`` or ``annotation.deita`` is missing or falsy.
    - Score = mean over turns of quality × complexity (float64, summed turn by turn as the reference does).
    - Labels = the string tags of ``instag.content`` that are in ``valid_tags`` (every string tag if None),
      order and duplicates kept; an empty ``content`` keeps the record with no labels.
    - A line that is not valid JSON, or whose annotation cannot be read (no ``content`` or score lists,
      an empty ``quality_scores``, fewer complexity than quality scores, non-numbers), raises
      ValueError naming the file and line, as the reference crashes on it. So does a line that is
      not a JSON object, which the reference mostly skips silently.
    """
    path = Path(path)
    coder = _TagCoder(valid_tags)
    line_starts, line_lengths, kept_lines, scores, tag_counts, tag_codes = [], [], [], [], [], []
    offset = n_lines = 0
    for lines in _chunks(path):
        lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
        line_lengths.append(lengths)
        line_starts.append(offset + np.cumsum(lengths + 1) - (lengths + 1))
        offset += int(lengths.sum()) + len(lines)
        raw_tags: list = []
        number = n_lines  # the last line parsed
        try:
            for number, record in enumerate(map(_loads, lines), start=n_lines + 1):
                if type(record) is not dict:
                    raise TypeError(f"expected a JSON object, got {type(record).__name__}")
                annotation = record.get("annotation")
                if not annotation:
                    continue
                instag, deita = annotation.get("instag"), annotation.get("deita")
                if not instag or not deita:
                    continue
                quality, complexity = deita["quality_scores"], deita["complexity_scores"]
                total = 0.0
                for turn in range(len(quality)):
                    total += quality[turn] * complexity[turn]
                scores.append(total / len(quality))
                content = instag["content"]
                tag_counts.append(len(content))
                raw_tags += content
                kept_lines.append(number)
        except _UnparseableLine as error:
            raise ValueError(f"{path}:{number + 1}: not valid JSON ({error}); the reference loader fails on this line too") from None
        except (AttributeError, KeyError, IndexError, TypeError, ArithmeticError) as error:
            raise ValueError(f"{path}:{number}: unreadable record ({type(error).__name__}: {error})") from None
        tag_codes.append(coder.encode(raw_tags))
        n_lines += len(lines)

    kept = np.array(kept_lines, dtype=np.int64)
    starts = np.concatenate([np.zeros(0, np.int64), *line_starts])[kept - 1]
    codes = np.concatenate([np.zeros(0, np.int64), *tag_codes])
    valid = codes >= 0
    sample_of_tag = np.repeat(np.arange(len(kept)), np.array(tag_counts, dtype=np.int64))
    valid_counts = np.bincount(sample_of_tag[valid], minlength=len(kept))
    return Pool(
        path=path,
        line_numbers=kept,
        line_starts=starts,
        line_ends=starts + np.concatenate([np.zeros(0, np.int64), *line_lengths])[kept - 1],
        scores=np.array(scores, dtype=np.float64),
        tag_indptr=np.concatenate([[0], np.cumsum(valid_counts)]).astype(np.int64),
        tag_ids=codes[valid],
        tags=coder.tags,
        n_lines=n_lines,
    )


def write_selected(pool: Pool, order, out_path: str | os.PathLike) -> None:
    """Write the input lines of samples ``order`` (pool indices), unchanged and in that order, one per line."""
    out_path = Path(out_path)
    if out_path.exists() and out_path.samefile(pool.path):
        raise ValueError(f"{out_path}: the output would overwrite the pool it is read from")
    order = np.asarray(order, dtype=np.int64)
    with open(out_path, "wb") as out:
        if not len(order):
            return
        with open(pool.path, "rb") as source, mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ) as view:
            for start, end in zip(pool.line_starts[order].tolist(), pool.line_ends[order].tolist()):
                out.write(view[start:end])
                out.write(b"\n")
