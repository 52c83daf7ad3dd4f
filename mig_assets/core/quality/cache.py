"""The quality cache: one score per LLM call ("unit"), in the project's append-only batch cache."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from mig_assets.core.quality.prompts import ScorePrompt
from mig_assets.core.store.batch_cache import BatchCache, model_folder, text_hash

BACKEND_ERROR = "backend error"  # the reason of a transient failure: never cached, a re-run retries it

CACHE_SCHEMA = pa.schema(
    [
        ("unit_hash", pa.string()),  # the key: SHA-256 of the unit kind and the text(s) it reads
        ("kind", pa.string()),  # complexity | quality | judge
        ("sample_id", pa.string()),  # the first sample seen with that unit
        ("complexity", pa.float64()),
        ("quality", pa.float64()),
        ("digit_mass", pa.float64()),
        ("status", pa.string()),  # ok | repaired | failed
        ("reason", pa.string()),
        ("attempts", pa.int32()),
        ("truncated", pa.bool_()),
        ("raw_output", pa.string()),
    ]
)


class QualityCache(BatchCache):
    """Scores per (model, prompt fingerprint, settings), keyed by the hash of what was scored:
    the query for a complexity score (shared by every answer to the same question), the query and
    response for a quality or judge score. Append-only batch files, each written atomically once
    its batch is scored, so a crash loses at most the batch in flight and a re-run scores the rest.

    Transient backend errors are not cached (a re-run retries them); deterministic failures (no
    digit in the log-probabilities, an unparseable answer after every retry) are.
    """

    def __init__(self, folder: Path, model_id: str, prompt: ScorePrompt, settings: str = ""):
        self.key = f"{prompt.version}-{prompt.fingerprint}" + (f"-{settings}" if settings else "")
        super().__init__(model_folder(folder, model_id) / f"prompt={self.key}", "unit_hash", CACHE_SCHEMA)


def unit_key(kind: str, *texts: str) -> str:
    """The cache key of one LLM call: the hash of its kind and the texts it reads."""
    return text_hash("\x00".join([kind, *texts]))
