"""Streaming readers for shard files: JSONL, JSON arrays/objects, Parquet (optionally gzip'd JSON).

Every reader yields :class:`RawRecord` items in file order. A record that cannot be parsed is still
yielded, with ``error`` set and its raw text kept, so the caller can quarantine it: nothing read
is ever dropped. Blank lines are not records; they are counted by :class:`ReadStats`. Damage to
the container itself (a truncated gzip stream, an undecodable Parquet row group) costs only the
damaged part: it becomes one quarantined record, and one line in ``ReadStats.container_errors``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import orjson
import pyarrow as pa

from mig_assets.core.ingest.parts import JsonlPart
from mig_assets.core.ingest.records import CanonicalRecord, RecordError
from mig_assets.core.ingest.streams import open_binary
from mig_assets.core.ingest.typed import canonical_from_json
from mig_assets.core.store.layout import SUPPORTED_SUFFIXES, is_supported

BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_RECORD_BYTES = 32 * 1024 * 1024
PARQUET_BATCH_ROWS = 2048
OVERSIZED_PREVIEW_BYTES = 64 * 1024  # what an over-limit record keeps in quarantine (the file keeps all)
# what a damaged compressed stream or Parquet file raises while being read
CONTAINER_ERRORS = (EOFError, OSError)
PARQUET_ERRORS = (*CONTAINER_ERRORS, pa.ArrowException)


@dataclass(slots=True)  # slots: a faster __init__ (one record per input row)
class RawRecord:
    line_no: int  # 1-based line of the record's first character (row number for Parquet)
    raw_text: str
    value: Any = None
    error: RecordError | None = None
    raw_bytes: bytes | None = None  # the undecoded bytes, kept only when they are not valid UTF-8
    canonical: CanonicalRecord | None = None  # set instead of value where typed decoding could vouch for the record


@dataclass
class ReadStats:
    blank_lines: int = 0
    container: str = ""  # jsonl | json_array | json_object | parquet
    # damage to the file itself (truncated gzip, corrupt Parquet page, broken array syntax): one
    # line each, naming the place; the part that could not be read is one quarantined record
    container_errors: list[str] = field(default_factory=list)


def read_records(path: Path, stats: ReadStats, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, *, typed: bool = False) -> Iterator[RawRecord]:
    """Yield every record of ``path`` in order, parse errors included. With ``typed``, a JSONL record
    of a common shape comes already canonical (``canonical`` set, format detected: see
    ``typed.canonical_from_json``); every other record comes parsed, as without it."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        stats.container = "parquet"
        yield from _read_parquet(path, stats, max_record_bytes)
        return
    if not is_supported(path):
        raise ValueError(f"{path}: unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    try:
        with open_binary(path) as handle:
            head = handle.read1(4096).lstrip(BOM).lstrip()  # one raw read: a damaged stream still shows its start
    except CONTAINER_ERRORS:
        head = b""  # a damaged stream: the JSONL reader keeps what it can and quarantines the rest
    if name.endswith((".json", ".json.gz")) and head.startswith(b"["):
        stats.container = "json_array"
        yield from _read_json_array(path, stats, max_record_bytes)
    elif name.endswith((".json", ".json.gz")) and _is_single_object(path):
        stats.container = "json_object"
        yield from _read_json_array(path, stats, max_record_bytes, single_object=True)
    else:
        stats.container = "jsonl"
        yield from _read_jsonl(path, stats, max_record_bytes, typed=typed)


def read_jsonl_part(
    path: Path, part: JsonlPart, stats: ReadStats, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, *, typed: bool = False
) -> Iterator[RawRecord]:
    """The records of one part of an uncompressed JSONL file (see :func:`jsonl_parts`), as the whole
    file's reader yields them: same line numbers, same errors (``typed``: as in :func:`read_records`)."""
    stats.container = "jsonl"
    yield from _read_jsonl(path, stats, max_record_bytes, part, typed=typed)


def _read_jsonl(path: Path, stats: ReadStats, max_record_bytes: int, part: JsonlPart | None = None, *, typed: bool = False) -> Iterator[RawRecord]:
    """One record per line (of the file, or of ``part`` of it). A line is read at most
    ``max_record_bytes`` at a time, so an oversized line is measured and quarantined without ever
    being held whole; a damaged compressed stream ends the file with one quarantined record naming
    the line and byte offset where it broke."""
    first_line, offset, end = (part.first_line_no, part.start, part.end) if part else (1, 0, None)
    line_no = first_line - 1  # offset: bytes of (decompressed) content before the current line
    with open_binary(path) as handle:
        if offset:
            handle.seek(offset)
        readline, read_limit = handle.readline, max_record_bytes + 2  # + room for CR LF
        while True:
            reading = line_no + 1
            try:
                line = readline(read_limit) if end is None or offset < end else b""
                if not line:
                    return
                line_no = reading
                start, size = offset, len(line)
                if size > max_record_bytes + 1 and not line.endswith(b"\n"):
                    size, record_size = _rest_of_line_size(handle, line)
                    offset = start + size
                    yield _oversized_line(line, line_no, start, record_size, max_record_bytes)
                    continue
            except CONTAINER_ERRORS as exc:
                reason = f"{_container_reason(path, exc)} at line {reading} (byte {offset:,} of the decompressed content)"
                stats.container_errors.append(reason)
                yield RawRecord(reading, "", error=RecordError("(file)", f"{reason}; the rest of the file could not be read"))
                return
            offset = start + size
            if line_no == 1:
                line = line.removeprefix(BOM)
            line = line.rstrip(b"\r\n")
            if not line or line.isspace():  # isspace: the bytes strip() removes, without a copy of the line
                stats.blank_lines += 1
                continue
            yield _parse_line(line, line_no, max_record_bytes, typed)


def _oversized_line(head: bytes, line_no: int, offset: int, size: int, max_record_bytes: int) -> RawRecord:
    preview = head[:OVERSIZED_PREVIEW_BYTES]
    too_big = _size_error(size, max_record_bytes)
    assert too_big is not None  # called for a line over the limit
    return RawRecord(
        line_no,
        preview.decode("utf-8", errors="backslashreplace"),
        error=RecordError(
            too_big.field,
            f"{too_big.reason}; its first {len(preview):,} bytes are kept here, all of it is in the file from byte {offset:,}",
        ),
    )


def _rest_of_line_size(handle, head: bytes) -> tuple[int, int]:
    """Skip the rest of an oversized line in bounded chunks; returns its size with and without the line end."""
    size, chunk = len(head), head
    while not chunk.endswith(b"\n"):
        chunk = handle.readline(1 << 20)
        if not chunk:
            break
        size += len(chunk)
    return size, size - (len(chunk) - len(chunk.rstrip(b"\r\n")))


def _container_reason(path: Path, exc: BaseException) -> str:
    kind = "compressed stream" if path.name.lower().endswith(".gz") else "file"
    return f"damaged {kind}: {_describe(exc)}"


def _describe(exc: BaseException) -> str:
    """``Type: message`` on one line (pyarrow's messages span several)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _parse_line(line: bytes, line_no: int, max_record_bytes: int, typed: bool) -> RawRecord:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RawRecord(
            line_no,
            line.decode("utf-8", errors="backslashreplace"),
            error=RecordError("(line)", f"invalid UTF-8 at byte {exc.start}: {line[exc.start : exc.start + 4]!r}"),
            raw_bytes=line,
        )
    if len(line) > max_record_bytes:
        return RawRecord(line_no, text, error=_size_error(len(line), max_record_bytes))
    if typed and (canonical := canonical_from_json(line)) is not None:
        return RawRecord(line_no, text, None, None, None, canonical)
    try:
        return RawRecord(line_no, text, orjson.loads(line))  # positional: keywords cost per row
    except orjson.JSONDecodeError as exc:
        return RawRecord(line_no, text, error=RecordError("(line)", f"malformed JSON: {exc}"))


def _size_error(n_bytes: int, max_record_bytes: int) -> RecordError | None:
    if n_bytes <= max_record_bytes:
        return None
    return RecordError("(record)", f"record is {n_bytes:,} bytes, over the max_record_bytes limit of {max_record_bytes:,}")


def _is_single_object(path: Path) -> bool:
    """A .json file holding exactly one object (pretty-printed or not) rather than JSON lines."""
    data, damage = _read_all(path)
    if damage:
        return False
    try:
        return isinstance(orjson.loads(data.removeprefix(BOM)), dict)
    except orjson.JSONDecodeError:
        return False


def _read_all(path: Path) -> tuple[bytes, str | None]:
    """The file's (decompressed) bytes, up to where a damaged stream broke, and the damage if any."""
    chunks = []
    try:
        with open_binary(path) as handle:
            while chunk := handle.read1(1 << 20):  # one raw read at a time: nothing read is lost to an error
                chunks.append(chunk)
    except CONTAINER_ERRORS as exc:
        data = b"".join(chunks)
        return data, f"{_container_reason(path, exc)} after {len(data):,} bytes of decompressed content"
    return b"".join(chunks), None


def _read_json_array(path: Path, stats: ReadStats, max_record_bytes: int, single_object: bool = False) -> Iterator[RawRecord]:
    """Walk a JSON array element by element, keeping each element's source line.

    Text is decoded with ``surrogateescape`` so that one invalid byte spoils only its own element.
    A syntax error stops the walk: the unparsed remainder becomes one quarantined record and one
    container error. A damaged compressed stream keeps the elements decompressed before it broke.
    """
    data, damage = _read_all(path)
    text = data.removeprefix(BOM).decode("utf-8", errors="surrogateescape")
    records = _walk_array(text, max_record_bytes, single_object)
    for record in records:
        if record.error is not None and record.error.field == "(file)":  # the walk stopped here
            if damage:
                record.error = RecordError("(file)", f"{damage}; {record.error.reason}")
            stats.container_errors.append(f"line {record.line_no}: {record.error.reason}")
            damage = None
        yield record
    if damage:  # the stream broke after the array's closing bracket: no record lost, the file is still damaged
        stats.container_errors.append(damage)


def _walk_array(text: str, max_record_bytes: int, single_object: bool) -> Iterator[RawRecord]:
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
    """The element starting at ``pos`` and the offset just past it (-1 when the walk cannot go on).

    ``json`` finds the element's end; ``orjson`` then parses it as the JSONL reader does, so both
    containers accept the same records (no lone surrogates, nesting at most 1024 levels).
    """
    try:
        end = decoder.raw_decode(text, pos)[1]
    except json.JSONDecodeError as exc:
        return _remainder(text, pos, line_of, f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"), -1
    except RecursionError:  # nested deeper than Python's parser goes: find the end without it
        end = _end_of_value(text, pos)
        if end < 0:
            return _remainder(text, pos, line_of, "malformed JSON: an unterminated, deeply nested value"), -1
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
    try:
        return RawRecord(line_no, element, value=orjson.loads(encoded)), end
    except orjson.JSONDecodeError as exc:
        return RawRecord(line_no, element, error=RecordError("(record)", f"unreadable JSON value: {exc}")), end


_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _end_of_value(text: str, pos: int) -> int:
    """Offset just past the array or object starting at ``pos`` (brackets counted, strings skipped),
    or -1 if it never closes. Iterative, so any depth is fine."""
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text, pos):
        token = match.group()
        if token in "[{":
            depth += 1
        elif token in "]}":
            depth -= 1
            if depth == 0:
                return match.end()
    return -1


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


def _read_parquet(path: Path, stats: ReadStats, max_record_bytes: int) -> Iterator[RawRecord]:
    """Rows in order, row group by row group: a row group that cannot be decoded (a corrupt page)
    becomes one quarantined record naming it and its rows; an unreadable footer (a truncated
    file) one record for the file."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except PARQUET_ERRORS as exc:
        reason = f"not a readable Parquet file: {_describe(exc)}"
        stats.container_errors.append(reason)
        yield RawRecord(1, "", error=RecordError("(file)", f"{reason}; no row could be read"))
        return
    row_no = 0
    for group in range(parquet.num_row_groups):
        last = row_no + parquet.metadata.row_group(group).num_rows
        try:
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group]):
                for row in batch.to_pylist():
                    row_no += 1
                    raw = orjson.dumps(row, default=str, option=orjson.OPT_NON_STR_KEYS)
                    text = raw.decode("utf-8")
                    too_big = _size_error(len(raw), max_record_bytes)
                    yield RawRecord(row_no, text, error=too_big) if too_big else RawRecord(row_no, text, value=row)
        except PARQUET_ERRORS as exc:
            reason = f"undecodable Parquet row group {group} (rows {row_no + 1:,} to {last:,}): {_describe(exc)}"
            stats.container_errors.append(reason)
            yield RawRecord(row_no + 1, "", error=RecordError(f"(row group {group})", f"{reason}; those rows stay unread in the file"))
            row_no = last
