"""The columns of a shard's samples (``SAMPLE_SCHEMA``), built from canonical records one column at a
time: Python lists per column, one ``pa.array`` each, no dict per row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mig_assets.core.ingest.readers import RawRecord
from mig_assets.core.ingest.records import CanonicalRecord
from mig_assets.core.store.parquet import dictionary_columns
from mig_assets.core.tokens import CHARS_PER_TOKEN

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
SAMPLE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("shard", pa.string()),
        ("line_no", pa.int64()),
        ("source_file", pa.string()),
        ("source_format", pa.string()),
        ("messages", pa.list_(MESSAGE_TYPE)),
        ("n_turns", pa.int32()),
        ("n_chars", pa.int64()),
        ("n_tokens_est", pa.int64()),
        ("source", pa.string()),
        ("original_id", pa.string()),
        ("imported_tags", pa.list_(pa.string())),
        ("imported_quality", pa.float64()),
        ("raw", pa.string()),
        ("duplicate_of", pa.string()),
        ("ingest_run_id", pa.string()),
        # annotation.deita's per-turn lists, as ingestion validated them (complexity cut to the quality
        # list's length); null without a Deita annotation. Imported quality scores read them, not raw.
        ("imported_quality_turns", pa.list_(pa.float64())),
        ("imported_complexity_turns", pa.list_(pa.float64())),
    ]
)
# the columns a shard's samples are written without a dictionary: a value of its own on (nearly) every row
SAMPLE_DICTIONARY = dictionary_columns(
    SAMPLE_SCHEMA,
    (
        "sample_id",
        "line_no",
        "messages.list.element.content",
        "n_chars",
        "n_tokens_est",
        "original_id",
        "imported_quality",
        "raw",
        "imported_quality_turns",
        "imported_complexity_turns",
    ),
)


class SampleColumns:
    """SAMPLE_SCHEMA's per-row columns as Python lists (messages flattened into roles and contents
    with list offsets), turned into one Arrow table at the end: no per-row dict."""

    def __init__(self):
        self.sample_id, self.line_no, self.source_format = [], [], []
        self.source, self.original_id, self.imported_tags, self.imported_quality, self.raw = [], [], [], [], []
        self.roles, self.contents, self.offsets = [], [], [0]
        self.quality_turns, self.complexity_turns = [], []

    def __len__(self) -> int:
        return len(self.sample_id)

    def add(self, raw: RawRecord, record: CanonicalRecord) -> None:
        self.sample_id.append(record.sample_id)
        self.line_no.append(raw.line_no)
        self.source_format.append(record.source_format)
        self.source.append(record.source)
        self.original_id.append(record.original_id)
        self.imported_tags.append(record.imported_tags)
        self.imported_quality.append(record.imported_quality)
        self.raw.append(raw.raw_text)
        turns = record.deita_turns
        self.quality_turns.append(turns[0] if turns else None)
        self.complexity_turns.append(turns[1] if turns else None)
        for role, content in record.messages:
            self.roles.append(role)
            self.contents.append(content)
        self.offsets.append(len(self.roles))

    def table(self, context) -> pa.Table:
        """The rows as SAMPLE_SCHEMA, with what every row of the shard shares from ``context`` (a ShardContext)."""
        n = len(self.sample_id)
        offsets = pa.array(self.offsets, pa.int32())
        contents = pa.array(self.contents, pa.string())
        turns = pa.StructArray.from_arrays([pa.array(self.roles, pa.string()), contents], fields=list(MESSAGE_TYPE))
        n_chars = pa.array(_row_sums(pc.utf8_length(contents).to_numpy(), self.offsets), pa.int64())
        messages = pa.ListArray.from_arrays(offsets, turns)
        columns = {
            "sample_id": pa.array(self.sample_id, pa.string()),
            "shard": pa.array([context.shard] * n, pa.string()),
            "line_no": pa.array(self.line_no, pa.int64()),
            "source_file": pa.array([context.source_file] * n, pa.string()),
            "source_format": pa.array(self.source_format, pa.string()),
            "messages": messages,
            "n_turns": pc.list_value_length(messages).cast(pa.int32()),
            "n_chars": n_chars,
            "n_tokens_est": pc.ceil(pc.divide(n_chars.cast(pa.float64()), float(CHARS_PER_TOKEN))).cast(pa.int64()),
            "source": pa.array(self.source, pa.string()),
            "original_id": pa.array(self.original_id, pa.string()),
            "imported_tags": pa.array(self.imported_tags, pa.list_(pa.string())),
            "imported_quality": pa.array(self.imported_quality, pa.float64()),
            "raw": pa.array(self.raw, pa.string()),
            "duplicate_of": pa.nulls(n, pa.string()),
            "ingest_run_id": pa.array([context.run_id] * n, pa.string()),
            "imported_quality_turns": pa.array(self.quality_turns, pa.list_(pa.float64())),
            "imported_complexity_turns": pa.array(self.complexity_turns, pa.list_(pa.float64())),
        }
        return pa.table(columns, schema=SAMPLE_SCHEMA)


def _row_sums(per_turn: np.ndarray, offsets: list[int]) -> np.ndarray:
    """Each row's sum over its turns (offsets[i]:offsets[i + 1]; every row has a turn)."""
    if len(offsets) < 2:
        return np.zeros(0, np.int64)
    return np.add.reduceat(per_turn.astype(np.int64), offsets[:-1])
