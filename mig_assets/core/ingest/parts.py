"""Cutting an uncompressed JSONL file into parts that worker processes read side by side.

A part is a byte range of whole lines with the number of its first line, so a part's reader
(``readers.read_jsonl_part``) yields the same line numbers and errors as the whole file's reader.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


@dataclass(frozen=True)
class JsonlPart:
    """Bytes ``start`` to ``end`` of a JSONL file, whole lines, the first of them line ``first_line_no``."""

    start: int
    end: int
    first_line_no: int


def is_splittable(path: Path) -> bool:
    """An uncompressed JSONL file: one record per line, so it can be read in parts (:func:`jsonl_parts`)."""
    return path.name.lower().endswith((".jsonl", ".ndjson"))


def jsonl_parts(path: Path, n_parts: int) -> list[JsonlPart]:
    """Cut an uncompressed JSONL file into at most ``n_parts`` byte ranges of about equal size, each
    starting at a line start, with the number of its first line (a count of the newlines before it)."""
    size = path.stat().st_size
    starts = [0]
    with open(path, "rb") as handle:
        for k in range(1, n_parts):
            handle.seek(max(k * size // n_parts, starts[-1]))
            while (chunk := handle.readline(1 << 20)) and not chunk.endswith(b"\n"):  # to the next line start, in bounded reads
                pass
            if handle.tell() >= size:
                break
            if handle.tell() > starts[-1]:
                starts.append(handle.tell())
        bounds = [*starts, size]
        parts, line_no = [], 1
        handle.seek(0)
        for start, end in zip(bounds, bounds[1:]):
            parts.append(JsonlPart(start, end, line_no))
            line_no += _count_newlines(handle, end - start)
    return parts


def _count_newlines(handle, n_bytes: int) -> int:
    count = 0
    while n_bytes > 0:
        chunk = handle.read(min(n_bytes, 1 << 22))
        count += chunk.count(b"\n")
        n_bytes -= len(chunk)
    return count


def end_with_parent(parent_pid: int) -> None:
    """Initializer of an ingestion worker: on Linux the kernel kills it when the process that forked
    it dies (kill -9 included), so a killed ingestion leaves no orphan reading or writing staging
    files; it exits at once if that process is already gone."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)
