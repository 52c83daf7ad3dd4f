"""MIG through the Dagster assets equals the reference on pools from the benchmark generator.

With the reference's inputs (imported InsTag tags, its valid-tag file, precomputed label vectors,
a budget as a count), ``mig_selection`` must pick the reference's samples in the reference's order,
element by element: tags are taken as written (the valid-tag file alone decides), and ties go to
the earlier sample in input order (shards in registration order, then lines), as the reference's
argmax does on its file.
"""

import pytest

from benchmarks.mig_assets_vs_reference import (
    asset_order,
    first_difference,
    reference_order,
    split_into_shards,
)
from benchmarks.mig_synthetic import generate
from tests.conftest import MIG_FIXTURES


@pytest.mark.parametrize(
    "records, labels, picks, n_shards",
    [(20_000, 1_000, 2_000, 2), (50_000, 2_000, 500, 1)],
    ids=["20k-x-1k-2000-picks-2-shards", "50k-x-2k-500-picks"],
)
def test_mig_asset_gives_the_reference_pick_order(records, labels, picks, n_shards, tmp_path, layout, instance, resources):
    # label names drawn from the reference's valid-tag list, as benchmarks/bench_mig.py does
    paths = generate(tmp_path / "generated", records, labels, seed=7, vocabulary=MIG_FIXTURES / "valid_tags.json")
    shards = split_into_shards(paths.pool, layout.incoming_dir, n_shards)
    expected = reference_order(paths, picks)
    actual = asset_order(layout.duckdb_path, instance, resources, paths, shards, picks)
    assert len(expected) == picks
    assert first_difference(actual, expected) == "identical"


def test_first_difference_names_the_first_differing_pick():
    assert first_difference(["a", "b", "c"], ["a", "b", "c"]) == "identical"
    assert first_difference(["a", "x", "c"], ["a", "b", "c"]).startswith("first differing pick: 2 ")
