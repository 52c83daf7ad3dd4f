"""Streaming readers for shard files: JSONL, JSON arrays/objects, Parquet (optionally gzip'd JSON).

Every reader yields :class:`RawRecord` items in file order. A record that cannot be parsed is still
yielded, with ``error`` set and its raw text kept, so the caller can quarantine it: nothing read
is ever dropped. Blank lines are not records; they are counted by :class:`ReadStats`.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

import orjson

from mig_assets.core.records import RecordError

BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_RECORD_BYTES = 32 * 1024 * 1024
SUPPORTED_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".jsonl.gz", ".ndjson.gz", ".json.gz")
PARQUET_BATCH_ROWS = 2048


@dataclass
class RawRecord:
    line_no: int  # 1-based line of the record's first character (row number for Parquet)
    raw_text: str
    value: Any = None
    error: RecordError | None = None
    raw_bytes: bytes | None = None  # the undecoded bytes, kept only when they are not valid UTF-8


@dataclass
class ReadStats:
    blank_lines: int = 0
    container: str = ""  # jsonl | json_array | json_object | parquet


def is_supported(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in SUPPORTED_SUFFIXES)


def read_records(
    path: Path, stats: ReadStats, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> Iterator[RawRecord]:
    """Yield every record of ``path`` in order, parse errors included."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        stats.container = "parquet"
        yield from _read_parquet(path, max_record_bytes)
        return
    if not is_supported(path):
        raise ValueError(f"{path}: unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    with _open_binary(path) as handle:
        head = handle.read(4096).lstrip(BOM).lstrip()
    if name.endswith((".json", ".json.gz")) and head.startswith(b"["):
        stats.container = "json_array"
        yield from _read_json_array(path, max_record_bytes)
    elif name.endswith((".json", ".json.gz")) and _is_single_object(path):
        stats.container = "json_object"
        yield from _read_json_array(path, max_record_bytes, single_object=True)
    else:
        stats.container = "jsonl"
        yield from _read_jsonl(path, stats, max_record_bytes)


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _read_jsonl(path: Path, stats: ReadStats, max_record_bytes: int) -> Iterator[RawRecord]:
    with _open_binary(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if line_no == 1:
                line = line.removeprefix(BOM)
            line = line.rstrip(b"\r\n")
            if not line.strip():
                stats.blank_lines += 1
                continue
            yield _parse_line(line, line_no, max_record_bytes)


def _parse_line(line: bytes, line_no: int, max_record_bytes: int) -> RawRecord:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RawRecord(
            line_no,
            line.decode("utf-8", errors="backslashreplace"),
            error=RecordError("(line)", f"invalid UTF-8 at byte {exc.start}: {line[exc.start:exc.start + 4]!r}"),
            raw_bytes=line,
        )
    too_big = _size_error(len(line), max_record_bytes)
    if too_big:
        return RawRecord(line_no, text, error=too_big)
    try:
        return RawRecord(line_no, text, value=orjson.loads(line))
    except orjson.JSONDecodeError as exc:
        return RawRecord(line_no, text, error=RecordError("(line)", f"malformed JSON: {exc}"))


def _size_error(n_bytes: int, max_record_bytes: int) -> RecordError | None:
    if n_bytes <= max_record_bytes:
        return None
    return RecordError("(record)", f"record is {n_bytes:,} bytes, over the max_record_bytes limit of {max_record_bytes:,}")


def _is_single_object(path: Path) -> bool:
    """A .json file holding exactly one object (pretty-printed or not) rather than JSON lines."""
    with _open_binary(path) as handle:
        data = handle.read()
    try:
        return isinstance(orjson.loads(data.removeprefix(BOM)), dict)
    except orjson.JSONDecodeError:
        return False


def _read_json_array(path: Path, max_record_bytes: int, single_object: bool = False) -> Iterator[RawRecord]:
    """Walk a JSON array element by element, keeping each element's source line.

    Text is decoded with ``surrogateescape`` so that one invalid byte spoils only its own element.
    A syntax error stops the walk: the unparsed remainder becomes one quarantined record.
    """
    with _open_binary(path) as handle:
        text = handle.read().removeprefix(BOM).decode("utf-8", errors="surrogateescape")
    decoder = json.JSONDecoder()
    line_of = _LineCounter(text)
    pos = _skip_ws(text, 0)
    if single_object:
        yield _decoded_element(text, pos, decoder, line_of, max_record_bytes)[0]
        return
    pos = _skip_ws(text, pos + 1)  # past '['
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        record, pos = _decoded_element(text, pos, decoder, line_of, max_record_bytes)
        yield record
        if record.error is not None and pos < 0:
            return
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]" and not text[pos + 1 :].strip():
            return
        yield _remainder(text, pos, line_of, "expected ',' or the closing ']' of the array")
        return


def _decoded_element(text: str, pos: int, decoder: json.JSONDecoder, line_of, max_record_bytes: int):
    try:
        value, end = decoder.raw_decode(text, pos)
    except json.JSONDecodeError as exc:
        return _remainder(text, pos, line_of, f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"), -1
    element = text[pos:end]
    line_no = line_of(pos)
    try:
        encoded = element.encode("utf-8")
    except UnicodeEncodeError:
        raw = element.encode("utf-8", errors="surrogateescape")
        bad = raw.decode("utf-8", errors="backslashreplace")
        return RawRecord(line_no, bad, error=RecordError("(record)", "invalid UTF-8 bytes in record"), raw_bytes=raw), end
    too_big = _size_error(len(encoded), max_record_bytes)
    if too_big:
        return RawRecord(line_no, element, error=too_big), end
    return RawRecord(line_no, element, value=value), end


def _remainder(text: str, pos: int, line_of, reason: str) -> RawRecord:
    rest = text[pos:]
    raw_bytes = rest.encode("utf-8", errors="surrogateescape")
    return RawRecord(
        line_of(pos),
        raw_bytes.decode("utf-8", errors="backslashreplace"),
        error=RecordError("(file)", f"{reason}; the remaining {len(raw_bytes):,} bytes were not parsed"),
        raw_bytes=raw_bytes,
    )


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


class _LineCounter:
    """1-based line number of a character offset, for offsets visited in increasing order."""

    def __init__(self, text: str):
        self.text, self.pos, self.line = text, 0, 1

    def __call__(self, pos: int) -> int:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def _read_parquet(path: Path, max_record_bytes: int) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    row_no = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            row_no += 1
            raw = orjson.dumps(row, default=str, option=orjson.OPT_NON_STR_KEYS)
            text = raw.decode("utf-8")
            too_big = _size_error(len(raw), max_record_bytes)
            yield RawRecord(row_no, text, error=too_big) if too_big else RawRecord(row_no, text, value=row)
