"""The one append-only batch cache behind the tag, quality and embedding caches: files written
before the caches shared it stay readable, and a crash mid-way keeps every finished batch."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mig_assets.core.embedding.encoder import EmbeddingCache, vectors_to_arrow
from mig_assets.core.llm.backends import Sampling
from mig_assets.core.quality.cache import CACHE_SCHEMA as QUALITY_CACHE_SCHEMA
from mig_assets.core.quality.cache import QualityCache, unit_key
from mig_assets.core.quality.prompts import PROMPTS as SCORE_PROMPTS
from mig_assets.core.store.batch_cache import BatchCache, text_hash
from mig_assets.core.tagging.prompts import PROMPTS as TAG_PROMPTS
from mig_assets.core.tagging.rows import CACHE_SCHEMA as TAG_CACHE_SCHEMA
from mig_assets.core.tagging.rows import TagCache


def write_old_batch(folder, table):
    """A batch file as the caches wrote them before they shared one mechanism."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "batch-1700000000000000000-4242.parquet", compression="zstd")


def test_caches_written_before_stay_readable(tmp_path):
    prompt, sampling = TAG_PROMPTS["atomic-v1"], Sampling()
    key = f"{prompt.version}-{prompt.fingerprint}-{sampling.key()}"
    tag_row = {"text_hash": text_hash("sort a list"), "sample_id": "s1", "tags": ["sorting"], "surface_tags": ["sorting"], "status": "ok"}
    write_old_batch(tmp_path / "tag_cache" / "model=org_m" / f"prompt={key}", pa.Table.from_pylist([tag_row], schema=TAG_CACHE_SCHEMA))
    found = TagCache(tmp_path / "tag_cache", "org/m", prompt, sampling).lookup([tag_row["text_hash"], "absent"])
    assert list(found) == [tag_row["text_hash"]] and found[tag_row["text_hash"]]["tags"] == ["sorting"]

    score_prompt = SCORE_PROMPTS["deita-v1"]
    unit = {"unit_hash": unit_key("complexity", "q"), "kind": "complexity", "sample_id": "s1", "complexity": 2.5, "status": "ok"}
    folder = tmp_path / "quality_cache" / "model=m" / f"prompt={score_prompt.version}-{score_prompt.fingerprint}-q768"
    write_old_batch(folder, pa.Table.from_pylist([unit], schema=QUALITY_CACHE_SCHEMA))
    assert QualityCache(tmp_path / "quality_cache", "m", score_prompt, "q768").lookup([unit["unit_hash"]])[unit["unit_hash"]]["complexity"] == 2.5

    vectors = np.array([[0.6, 0.8]], dtype=np.float32)
    write_old_batch(tmp_path / "embedding_cache" / "model=m", pa.table({"text_hash": [text_hash("a dog")], "embedding": vectors_to_arrow(vectors)}))

    def refuse(texts):
        raise AssertionError(f"cached texts embedded again: {texts}")

    again, new = EmbeddingCache(tmp_path / "embedding_cache", "m").lookup(["a dog"], refuse)
    assert new == 0 and np.array_equal(again, vectors)


def test_fill_keeps_finished_batches_when_a_later_one_fails(tmp_path):
    cache = BatchCache(tmp_path, "key", pa.schema([("key", pa.string()), ("value", pa.int64())]))

    def work(batch):
        if "k4" in batch:
            raise RuntimeError("the engine died")
        return [{"key": key, "value": int(key[1:])} for key in batch]

    done = []
    with pytest.raises(RuntimeError):
        for batch, _ in cache.fill([f"k{i}" for i in range(6)], 2, work):
            done.append(batch)
    assert done == [["k0", "k1"], ["k2", "k3"]] and len(cache.files()) == 2
    assert cache.lookup(["k0", "k3", "k4"]) == {"k0": {"key": "k0", "value": 0}, "k3": {"key": "k3", "value": 3}}


def test_fill_caches_only_what_cacheable_accepts(tmp_path):
    cache = BatchCache(tmp_path, "key", pa.schema([("key", pa.string()), ("ok", pa.bool_())]))
    results = [rows for _, rows in cache.fill(["a", "b", "c"], 10, lambda batch: [{"key": k, "ok": k != "b"} for k in batch], cacheable=lambda row: row["ok"])]
    assert [row["key"] for row in results[0]] == ["a", "b", "c"]
    assert sorted(cache.lookup(["a", "b", "c"])) == ["a", "c"]
    assert list(cache.fill([], 10, lambda batch: [])) == [] and len(cache.files()) == 1
