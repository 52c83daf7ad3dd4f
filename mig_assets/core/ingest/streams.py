"""Reading a shard file's bytes, gzip included, without losing what comes before a damaged part."""

from __future__ import annotations

import io
import zlib
from pathlib import Path


def open_binary(path: Path) -> io.BufferedReader:
    """The bytes of a shard file, decompressed when its name ends in .gz."""
    return io.BufferedReader(GzipStream(path)) if path.name.lower().endswith(".gz") else open(path, "rb")


class GzipStream(io.RawIOBase):
    """The decompressed bytes of a gzip file (every member), as a raw stream that hands out all the
    bytes that can be decompressed before it reports damage: a truncated stream raises EOFError,
    and corrupt or non-gzip data OSError, only once everything before the damage has been read.
    (``gzip.open`` raises as soon as its read-ahead meets the damage, losing the bytes before it.)"""

    def __init__(self, path: Path):
        self._file: io.BufferedReader | None = open(path, "rb")
        self._inflater = zlib.decompressobj(wbits=31)
        self._pending, self._offset = b"", 0
        self._fed = False  # whether the current member has received input
        self._error: Exception | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._offset == len(self._pending) and self._file is not None:
            self._pending, self._offset = self._inflate_more(), 0
        n = min(len(buffer), len(self._pending) - self._offset)
        if n == 0 and self._error is not None:
            raise self._error
        buffer[:n] = self._pending[self._offset : self._offset + n]
        self._offset += n
        return n

    def _inflate_more(self) -> bytes:
        assert self._file is not None  # readinto stops asking once the file is closed
        chunk = self._inflater.unused_data if self._inflater.eof else self._file.read(1 << 16)
        if self._inflater.eof:
            if not chunk:
                chunk = self._file.read(1 << 16)
            if not chunk:
                return self._finish(None)
            self._inflater, self._fed = zlib.decompressobj(wbits=31), False  # the next member
        if not chunk:
            truncated = EOFError("the compressed stream ends before its end-of-stream marker (a truncated file)")
            return self._finish(truncated if self._fed else None)
        self._fed = True
        try:
            return self._inflater.decompress(chunk)
        except zlib.error as exc:
            return self._finish(OSError(f"not a valid gzip stream ({exc})"))

    def _finish(self, error: Exception | None) -> bytes:
        self._error = error
        if self._file is not None:
            self._file.close()
        self._file = None
        return b""

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()
