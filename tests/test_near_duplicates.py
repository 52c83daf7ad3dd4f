"""The ``near_duplicates`` asset through real Dagster materializations, Parquet and DuckDB: planted
lexical and semantic clusters, the representative rule, a grown pool that signs and queries only
its new shard, and the same output on a local Ray cluster."""

import json

import dagster as dg
import numpy as np
import pytest

from mig_assets.core.curation.near_duplicate_state import state_file
from mig_assets.core.store.catalog import open_catalog
from mig_assets.defs.near_duplicates.assets import near_duplicates
from tests.conftest import materialize_shards

WORDS = [f"term{i}" for i in range(3000)]


def prompt(seed: int, length: int = 60) -> str:
    return " ".join(np.random.default_rng(seed).choice(WORDS, size=length))


def edited(text: str) -> str:
    words = text.split()
    words[len(words) // 2] = "edited"
    return words[0].upper() + "  " + " ".join(words[1:]) + " ?"


def mig_record(text: str, quality: float | None = None) -> dict:
    record = {"dialogs": [{"role": "user", "content": text}, {"role": "assistant", "content": f"answer to {text[:20]}"}]}
    if quality is not None:
        record["annotation"] = {"deita": {"quality_scores": [quality], "complexity_scores": [1.0]}}
    return record


def ingest(layout, instance, resources, name: str, records: list[dict]) -> str:
    path = layout.incoming_dir / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    materialize_shards(instance, resources, layout, [path])
    return layout.shard_key(path)


def materialize(instance, resources, **config) -> dict:
    result = dg.materialize([near_duplicates], instance=instance, resources=resources, run_config={"ops": {"near_duplicates": {"config": config}}})
    assert result.success
    return {k: v.value for k, v in result.asset_materializations_for_node("near_duplicates")[0].metadata.items()}


def view(layout) -> list[dict]:
    with open_catalog(layout) as con:
        return con.sql("SELECT * FROM near_duplicates ORDER BY method, cluster_id, sample_id").to_arrow_table().to_pylist()


def ids_by_text(layout) -> dict[str, str]:
    with open_catalog(layout) as con:
        return {text: sample_id for sample_id, text in con.sql("SELECT sample_id, messages[1].content FROM samples").fetchall()}


def test_planted_lexical_clusters_and_the_representative_rule(layout, instance, resources):
    base = [prompt(i) for i in range(40)]
    records = [mig_record(text, quality=2.0) for text in base]
    records.append(mig_record(edited(base[0]), quality=5.0))  # better than its original: the representative
    records.append(mig_record(edited(base[1]), quality=2.0))  # ties with its original: the lower sample_id
    records.append(mig_record(edited(base[1]) + " more", quality=None))  # no weight: never the representative
    ingest(layout, instance, resources, "pool.jsonl", records)
    meta = materialize(instance, resources, methods="minhash")
    rows = view(layout)
    ids = ids_by_text(layout)
    clusters: dict[str, set[str]] = {}
    for row in rows:
        clusters.setdefault(row["cluster_id"], set()).add(row["sample_id"])
    first = {ids[base[0]], ids[edited(base[0])]}
    second = {ids[base[1]], ids[edited(base[1])], ids[edited(base[1]) + " more"]}
    assert sorted(clusters.values(), key=len) == [first, second]
    representative = {row["sample_id"]: row["representative_id"] for row in rows}
    assert {representative[s] for s in first} == {ids[edited(base[0])]}
    assert {representative[s] for s in second} == {min(ids[base[1]], ids[edited(base[1])])}
    assert all(row["method"] == "minhash" for row in rows)
    assert all((row["similarity"] == 1.0) == (row["sample_id"] == row["representative_id"]) for row in rows)
    assert all(0.8 <= row["similarity"] <= 1.0 for row in rows if row["sample_id"] != row["representative_id"])
    assert meta["samples_excluded"] == 3 and meta["minhash_clusters"] == 2
    # the same pool and config again: the same table, byte for byte
    before = (layout.tables_dir / "near_duplicates" / "part-0.parquet").read_bytes()
    materialize(instance, resources, methods="minhash")
    assert (layout.tables_dir / "near_duplicates" / "part-0.parquet").read_bytes() == before


def test_a_grown_pool_finds_the_new_shards_copies_without_recomputing_old_shards(layout, instance, resources):
    old = [prompt(100 + i) for i in range(30)]
    first = ingest(layout, instance, resources, "a.jsonl", [mig_record(t) for t in old])
    meta = materialize(instance, resources, methods="minhash")
    assert meta["minhash_shards_signed"] == [first] and meta["minhash_clusters"] == 0
    old_files = [state_file(layout.warehouse_dir, kind, first) for kind in ("minhash_signatures", "minhash_pairs")]
    stamps = [(f.stat().st_mtime_ns, f.stat().st_ino) for f in old_files]

    new = [edited(old[3]), edited(old[7]), prompt(999)]
    second = ingest(layout, instance, resources, "b.jsonl", [mig_record(t) for t in new])
    meta = materialize(instance, resources, methods="minhash")
    assert meta["minhash_shards_signed"] == [second] and meta["minhash_samples_signed"] == 3
    assert meta["minhash_shards_queried"] == [second] and meta["minhash_rows_queried"] == 3
    assert [(f.stat().st_mtime_ns, f.stat().st_ino) for f in old_files] == stamps  # old shard's state untouched
    ids = ids_by_text(layout)
    pairs = {frozenset((row["sample_id"], row["representative_id"])) for row in view(layout) if row["sample_id"] != row["representative_id"]}
    assert pairs == {frozenset((ids[old[3]], ids[new[0]])), frozenset((ids[old[7]], ids[new[1]]))}

    # a run from scratch (state removed) gives the same table
    table = (layout.tables_dir / "near_duplicates" / "part-0.parquet").read_bytes()
    import shutil

    shutil.rmtree(layout.warehouse_dir / "near_duplicates")
    meta = materialize(instance, resources, methods="minhash")
    assert sorted(meta["minhash_shards_signed"]) == sorted([first, second])
    assert (layout.tables_dir / "near_duplicates" / "part-0.parquet").read_bytes() == table


def test_a_replaced_shard_is_signed_again_and_its_departed_samples_leave_the_clusters(layout, instance, resources):
    old = [prompt(300 + i) for i in range(10)]
    first = ingest(layout, instance, resources, "a.jsonl", [mig_record(t) for t in old])
    second = ingest(layout, instance, resources, "b.jsonl", [mig_record(edited(old[3])), mig_record(edited(old[1]))])
    materialize(instance, resources, methods="minhash")
    ids = ids_by_text(layout)
    assert {row["sample_id"] for row in view(layout)} == {ids[t] for t in (old[3], edited(old[3]), old[1], edited(old[1]))}
    b_files = [state_file(layout.warehouse_dir, kind, second) for kind in ("minhash_signatures", "minhash_pairs")]
    stamps = [f.stat().st_mtime_ns for f in b_files]
    # a new version of shard a without old[3] and old[1]: b's pairs with them must go, b's files stay
    ingest(layout, instance, resources, "a.jsonl", [mig_record(t) for i, t in enumerate(old) if i not in (1, 3)])
    meta = materialize(instance, resources, methods="minhash")
    assert meta["minhash_shards_signed"] == [first] and meta["minhash_shards_queried"] == [first]
    assert [f.stat().st_mtime_ns for f in b_files] == stamps
    assert view(layout) == []


def test_embedding_method_refuses_shards_without_embeddings(layout, instance, resources):
    ingest(layout, instance, resources, "a.jsonl", [mig_record(prompt(1))])
    result = dg.materialize(
        [near_duplicates],
        instance=instance,
        resources=resources,
        raise_on_error=False,
        run_config={"ops": {"near_duplicates": {"config": {"methods": "minhash,embedding"}}}},
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "have no sample_embeddings" in failure and "near_duplicates.methods" in failure


@pytest.mark.slow
def test_semantic_near_copies_with_the_real_embedding_model(layout, instance, resources):
    from mig_assets.defs.embeddings.assets import sample_embeddings

    texts = [
        "How do I reverse a list in Python?",
        "How can I reverse a list in Python?",
        "Write a short poem about the autumn sea.",
        "Explain the causes of the French Revolution.",
        "What is the capital city of Australia?",
        "Give me a recipe for a vegetarian lasagna.",
    ]
    shard = ingest(layout, instance, resources, "s.jsonl", [mig_record(t) for t in texts])
    assert dg.materialize([sample_embeddings], partition_key=shard, instance=instance, resources=resources).success
    meta = materialize(instance, resources, methods="minhash,embedding", embedding_threshold=0.9)
    ids = ids_by_text(layout)
    semantic = [row for row in view(layout) if row["method"] == "embedding"]
    assert {row["sample_id"] for row in semantic} == {ids[texts[0]], ids[texts[1]]}
    assert all(row["representative_id"] == min(ids[texts[0]], ids[texts[1]]) for row in semantic)
    assert meta["embedding_clusters"] == 1 and meta["embedding_index"] == "exact (faiss flat)"
    assert meta["minhash_clusters"] == 0  # four of seven words differ: not a lexical near copy


@pytest.mark.ray
@pytest.mark.slow
def test_ray_execution_gives_the_local_output(layout, instance, resources):
    from mig_assets.defs.embeddings.assets import sample_embeddings
    from mig_assets.resources import Execution

    old = [prompt(200 + i) for i in range(20)]
    shards = [ingest(layout, instance, resources, "a.jsonl", [mig_record(t) for t in old])]
    shards.append(ingest(layout, instance, resources, "b.jsonl", [mig_record(edited(old[2])), mig_record(edited(old[5]))]))
    for shard in shards:
        assert dg.materialize([sample_embeddings], partition_key=shard, instance=instance, resources=resources).success
    config = {"methods": "minhash,embedding", "embedding_threshold": 0.9}
    local = materialize(instance, resources, **config)
    assert local["embedding_samples_in_clusters"] >= 2  # the semantic queries found something to compare
    local_table = (layout.tables_dir / "near_duplicates" / "part-0.parquet").read_bytes()
    local_signatures = [f.read_bytes() for f in sorted((layout.warehouse_dir / "near_duplicates" / "minhash_signatures").rglob("*.parquet"))]
    import shutil

    shutil.rmtree(layout.warehouse_dir / "near_duplicates")
    ray_resources = {**resources, "execution": Execution(mode="ray", num_cpus=2, object_store_mb=256, num_actors=2, cpus_per_actor=0.5)}
    meta = materialize(instance, ray_resources, **config)
    assert meta["execution"] == "ray" and meta["minhash_clusters"] == 2 and meta["embedding_clusters"] == local["embedding_clusters"]
    assert (layout.tables_dir / "near_duplicates" / "part-0.parquet").read_bytes() == local_table
    signatures = [f.read_bytes() for f in sorted((layout.warehouse_dir / "near_duplicates" / "minhash_signatures").rglob("*.parquet"))]
    assert signatures == local_signatures
