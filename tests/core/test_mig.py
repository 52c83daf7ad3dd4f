"""Tests of the MIG core: parity with the reference's selections, lazy vs dense greedy, gains, edge cases."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import orjson
import pytest
import scipy.sparse as sp

from mig_assets.core.mig import algorithm as mig
from mig_assets.core.mig.algorithm import mig_from_labels, random_select, select, select_dense
from mig_assets.core.mig.problem import MigParams, build_label_graph, build_problem, embedding_lookup, phi, phi_prime, propagation_matrix, sample_label_matrix
from mig_assets.core.mig.reference_jsonl import load_valid_tags, read_pool
from mig_assets.core.mig.sample import run_sample

REFERENCE_CASES = ["default", "all_but_one", "norm", "prop_weight_0.5", "tau_0.8", "duplicates"]


def shared_dir() -> Path:
    """The ``shared`` folder beside the repository root."""
    return Path(__file__).resolve().parents[2] / ".." / "shared"


FIXTURES = shared_dir() / "fixtures" / "mig_reference"
needs_fixtures = pytest.mark.skipif(not FIXTURES.exists(), reason=f"reference fixtures not found at {FIXTURES}")


def reference_case(name: str) -> dict:
    return json.loads((FIXTURES / "expected.json").read_bytes())[name]


def case_params(case: dict) -> MigParams:
    return MigParams(
        tau=case["tau"],
        prop_weight=case["prop_weight"],
        norm=case["norm"],
        phi=case["phi"],
        phi_a=case["phi_a"],
        phi_b=case["phi_b"],
    )


def selected_ids(path: Path) -> list[str]:
    return [orjson.loads(line)["_id"] for line in path.read_bytes().splitlines()]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in records))
    return path


def annotated(tags: list, quality: list, complexity: list, **extra) -> dict:
    deita = {"quality_scores": quality, "complexity_scores": complexity}
    return {**extra, "annotation": {"instag": {"content": tags}, "deita": deita}}


def random_problem(seed: int, params: MigParams, n_samples: int = 300, n_labels: int = 40):
    """A random labelled pool with clustered label embeddings, samples without labels and exact duplicates."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_labels // 4, 8))
    embeddings = centres[rng.integers(len(centres), size=n_labels)] + 0.15 * rng.normal(size=(n_labels, 8))
    names = [f"label {j:02d}" for j in range(n_labels)]
    label_lists = [rng.choice(names, size=rng.integers(0, 7)).tolist() for _ in range(n_samples)]
    scores = rng.uniform(1, 30, size=n_samples)
    for copy, original in rng.integers(n_samples, size=(n_samples // 5, 2)).tolist():
        label_lists[copy], scores[copy] = list(label_lists[original]), scores[original]
    return label_lists, scores, names, embeddings


def propagated(label_lists, scores, names, embeddings, params: MigParams) -> sp.csr_array:
    vocabulary = sorted({label for labels in label_lists for label in labels})
    ids = [vocabulary.index(label) for labels in label_lists for label in labels]
    indptr = np.cumsum([0, *map(len, label_lists)])
    return build_problem(indptr, ids, vocabulary, scores, embedding_lookup(names, embeddings), params).propagated


# --- parity with the reference implementation ----------------------------------------------------------


@needs_fixtures
@pytest.mark.parametrize("name", REFERENCE_CASES)
def test_run_sample_reproduces_reference_selection(name, tmp_path):
    case = reference_case(name)
    pool_path, out = FIXTURES / case["pool"], tmp_path / "selected.jsonl"
    stats = run_sample(
        pool_path,
        out,
        case["n"],
        valid_tag_path=FIXTURES / "valid_tags.json",
        label_embeddings_prefix=FIXTURES / case["label_embeddings"],
        params=case_params(case),
    )
    assert selected_ids(out) == case["order"]
    assert stats["selected"] == case["n"]
    input_lines = set(pool_path.read_bytes().split(b"\n"))
    assert all(line in input_lines for line in out.read_bytes().splitlines())


@needs_fixtures
@pytest.mark.parametrize("gain_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", REFERENCE_CASES)
def test_dense_greedy_reproduces_reference_selection(name, gain_dtype):
    case = reference_case(name)
    params = case_params(case)
    pool = read_pool(FIXTURES / case["pool"], load_valid_tags(FIXTURES / "valid_tags.json"))
    labels = json.loads((FIXTURES / f"{case['label_embeddings']}.labels.json").read_bytes())
    embed = embedding_lookup(labels, np.load(FIXTURES / f"{case['label_embeddings']}.emb.npy"))
    Y = build_problem(pool.tag_indptr, pool.tag_ids, pool.tags, pool.scores, embed, params).propagated
    ids = [orjson.loads(line).get("_id") for line in (FIXTURES / case["pool"]).read_bytes().splitlines()]
    kept_ids = [ids[number - 1] for number in pool.line_numbers.tolist()]
    n = min(case["n"], 600)  # the full 1,978 picks of all_but_one are checked through the lazy path
    order = select_dense(Y, n, params, gain_dtype=gain_dtype)
    assert [kept_ids[i] for i in order.tolist()] == case["order"][:n]


# --- lazy greedy against the straightforward greedy ---------------------------------------------------

CONFIGURATIONS = [
    MigParams(),
    MigParams(norm=True, phi="exp", phi_alpha=0.05),
    MigParams(prop_weight=0.5, tau=0.8),
    MigParams(gain="exact"),
    MigParams(gain="exact", norm=True, phi="exp", phi_alpha=0.05),
]


def configuration_id(params: MigParams) -> str:
    return f"{params.gain}-{params.phi}-norm{params.norm}-tau{params.tau}-w{params.prop_weight}"


@pytest.mark.parametrize("frontier", ["default", "tiny"])
@pytest.mark.parametrize("params", CONFIGURATIONS, ids=configuration_id)
def test_lazy_greedy_matches_dense_greedy(params, frontier, monkeypatch):
    if frontier == "tiny":  # refills, sampled limits and scipy gathers on every few picks
        monkeypatch.setattr(mig, "_FRONTIER_SIZE", 8)
        monkeypatch.setattr(mig, "_FRONTIER_SAMPLE", 40)
        monkeypatch.setattr(mig, "_SCIPY_GATHER_ROWS", 2)
    for seed in range(3):
        label_lists, scores, names, embeddings = random_problem(seed, params)
        Y = propagated(label_lists, scores, names, embeddings, params)
        lazy = select(Y, len(scores), params)
        np.testing.assert_array_equal(lazy.order, select_dense(Y, len(scores), params))
        from_labels, universe = mig_from_labels(label_lists, scores, names, embeddings, 100, params)
        np.testing.assert_array_equal(from_labels.order, lazy.order[:100])
        assert universe == sorted({label for labels in label_lists for label in labels})


def test_exact_duplicates_tie_and_the_lower_index_wins():
    label_lists, scores, names, embeddings = random_problem(0, MigParams(), n_samples=60)
    label_lists.insert(0, list(label_lists[40]))
    scores = np.insert(scores, 0, scores[40])
    order = select(propagated(label_lists, scores, names, embeddings, MigParams()), 61).order.tolist()
    assert order.index(0) < order.index(41)


# --- gains and objective ----------------------------------------------------------------------------------


@pytest.mark.parametrize("phi_name", ["pow", "exp"])
def test_exact_gains_are_the_true_marginal_gains(phi_name):
    params = MigParams(gain="exact", phi=phi_name, phi_alpha=0.1)
    label_lists, scores, names, embeddings = random_problem(1, params, n_samples=14, n_labels=8)
    Y = propagated(label_lists, scores, names, embeddings, params).toarray().astype(np.float64)
    selection = select(Y, len(Y), params)
    coverage = np.zeros(Y.shape[1])
    information = phi(coverage, params).sum()
    picked: list[int] = []
    for pick, row in enumerate(selection.order.tolist()):
        brute = np.array([phi(coverage + y, params).sum() - information for y in Y])
        brute[picked] = -np.inf
        assert selection.gains[pick] == pytest.approx(brute.max(), rel=1e-12, abs=1e-12)
        assert brute[row] == pytest.approx(brute.max(), rel=1e-12, abs=1e-12)
        picked.append(row)
        coverage += Y[row]
        information = phi(coverage, params).sum()
        assert selection.objective[pick] == pytest.approx(information, rel=1e-12)
    assert (np.diff(selection.objective) >= 0).all()
    np.testing.assert_allclose(selection.coverage, coverage, rtol=1e-12)


def test_gradient_gains_objective_and_top_labels():
    params = MigParams()
    label_lists, scores, names, embeddings = random_problem(2, params, n_samples=80, n_labels=20)
    Y = propagated(label_lists, scores, names, embeddings, params)
    selection = select(Y, 30, params)
    dense = Y.toarray()
    coverage = np.zeros(Y.shape[1], dtype=np.float32)
    for pick, row in enumerate(selection.order.tolist()):
        contributions = dense[row].astype(np.float64) * phi_prime(coverage, params).astype(np.float64)
        assert selection.gains[pick] == pytest.approx(contributions.sum(), rel=1e-12)
        expected_top = [label for label in np.argsort(-contributions, kind="stable")[:3] if dense[row, label] > 0]
        assert selection.top_labels[pick, : len(expected_top)].tolist() == expected_top
        coverage += dense[row]
        assert selection.objective[pick] == pytest.approx(phi(coverage.astype(np.float64), params).sum(), rel=1e-12)
    assert (np.diff(selection.objective) >= 0).all()
    np.testing.assert_array_equal(selection.coverage, coverage)


# --- building blocks ---------------------------------------------------------------------------------------


def test_label_graph_threshold_is_inclusive_and_keeps_self_loops():
    embeddings = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)  # cos(e0, e1) = 0.6 exactly
    W = build_label_graph(embeddings, tau=0.6).toarray()
    assert W[0, 1] == W[1, 0] == np.float32(0.6)
    assert W[0, 2] == 0 and W[1, 2] == np.float32(0.8)
    assert build_label_graph(embeddings, tau=0.6000001).toarray()[0, 1] == 0
    np.testing.assert_array_equal(np.diag(build_label_graph(embeddings, tau=1.0).toarray()), np.ones(3))


def test_propagation_matrix_is_column_normalised():
    embeddings = np.random.default_rng(0).normal(size=(30, 4))
    W = build_label_graph(embeddings, tau=0.5)
    P = propagation_matrix(W, prop_weight=0.5).toarray()
    np.testing.assert_allclose(P.sum(axis=0), 1, rtol=1e-6)
    dense = W.toarray().astype(np.float64)
    scaled = np.diag(np.diag(dense)) + 0.5 * (dense - np.diag(np.diag(dense)))
    np.testing.assert_allclose(P, scaled / scaled.sum(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(propagation_matrix(W, prop_weight=0.0).toarray(), np.eye(30))


def test_sample_label_matrix_assigns_repeated_labels_and_norm_counts_them():
    X = sample_label_matrix([0, 3, 3], [0, 0, 2], [6.0, 5.0], n_labels=3).toarray()
    np.testing.assert_array_equal(X, [[6, 0, 6], [0, 0, 0]])
    X = sample_label_matrix([0, 3, 3], [0, 0, 2], [6.0, 5.0], n_labels=3, norm=True).toarray()
    np.testing.assert_array_equal(X, [[2, 0, 2], [0, 0, 0]])


# --- edge cases --------------------------------------------------------------------------------------------


def test_budget_of_pool_size_or_more_returns_every_sample_in_greedy_order():
    label_lists, scores, names, embeddings = random_problem(3, MigParams(), n_samples=50)
    Y = propagated(label_lists, scores, names, embeddings, MigParams())
    everything = select(Y, 75).order
    assert sorted(everything.tolist()) == list(range(50))
    np.testing.assert_array_equal(select(Y, 10).order, everything[:10])


def test_zero_budget_selects_nothing():
    label_lists, scores, names, embeddings = random_problem(4, MigParams(), n_samples=20)
    selection = select(propagated(label_lists, scores, names, embeddings, MigParams()), 0)
    assert selection.order.shape == selection.gains.shape == selection.objective.shape == (0,)
    assert selection.top_labels.shape == (0, 3)


def test_empty_pool_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="empty pool"):
        select(sp.csr_array((0, 5), dtype=np.float32), 3)
    with pytest.raises(ValueError, match="empty pool"):
        mig_from_labels([], [], ["a"], np.ones((1, 2)), 3)
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"_id": "x"}, {"annotation": {"instag": {}}}])
    with pytest.raises(ValueError, match="no record has a usable annotation"):
        run_sample(pool, tmp_path / "out.jsonl", 1, embed_labels=lambda labels: np.ones((len(labels), 2)))


def test_samples_without_labels_have_zero_gain_and_stay_candidates():
    label_lists = [["a"], [], ["b", "a"], [], ["c"]]
    selection, _ = mig_from_labels(label_lists, [2.0, 9.0, 3.0, 1.0, 4.0], ["a", "b", "c"], np.eye(3), 5)
    assert selection.order[-2:].tolist() == [1, 3]
    assert selection.gains[-2:].tolist() == [0.0, 0.0]
    assert (selection.top_labels[-2:] == -1).all()


@pytest.mark.parametrize("bad", [math.nan, -1.0, math.inf])
def test_invalid_scores_are_named(bad):
    scores = [1.0, 2.0, bad, 3.0, 4.0, bad]
    with pytest.raises(ValueError, match=r"sample indices \[2, 5\]"):
        mig_from_labels([["a"]] * 6, scores, ["a"], np.ones((1, 2)), 2)


def test_labels_without_embedding_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"no embedding: \['c'\]"):
        mig_from_labels([["a", "c"], ["b"]], [1.0, 2.0], ["a", "b"], np.eye(2), 1)
    pool = write_jsonl(tmp_path / "pool.jsonl", [annotated(["a", "zz"], [1.0], [2.0]), annotated(["b"], [1.0], [1.0])])
    (tmp_path / "emb.labels.json").write_text(json.dumps(["a"]))
    np.save(tmp_path / "emb.emb.npy", np.ones((1, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"no embedding: \['b', 'zz'\]"):
        run_sample(pool, tmp_path / "out.jsonl", 1, label_embeddings_prefix=tmp_path / "emb")


def test_tau_above_one_is_rejected():
    with pytest.raises(ValueError, match="tau must lie in"):
        MigParams(tau=1.01)


# --- pool reading, output, determinism ----------------------------------------------------------------------


def test_reader_applies_the_reference_loader_rules(tmp_path):
    records = [
        {"_id": "no annotation"},
        {"annotation": {}},
        {"annotation": {"instag": {}, "deita": {"quality_scores": [1], "complexity_scores": [1]}}},
        {"annotation": {"instag": {"content": ["a"]}}},
        annotated([], [2.0], [3.0], _id="empty content"),
        annotated(["a", "zz", "b", "a", 7], [1.5, 0.1], [2.0, 0.3, 9.0], _id="two turns"),
    ]
    path = write_jsonl(tmp_path / "pool.jsonl", records)
    with open(path, "ab") as file:
        file.write(b'{"annotation": {"instag": {"content": ["b"]}, "deita": {"quality_scores": [NaN], "complexity_scores": [1]}}}')
    pool = read_pool(path, valid_tags={"a", "b"})
    assert pool.line_numbers.tolist() == [5, 6, 7]
    assert pool.n_lines == 7
    assert pool.scores[:2].tolist() == [6.0, (0.0 + 1.5 * 2.0 + 0.1 * 0.3) / 2]
    assert math.isnan(pool.scores[2])
    bounds = zip(pool.tag_indptr, pool.tag_indptr[1:])
    tag_lists = [[pool.tags[j] for j in pool.tag_ids[start:stop]] for start, stop in bounds]
    assert tag_lists == [[], ["a", "b", "a"], ["b"]]
    assert path.read_bytes()[pool.line_starts[1] : pool.line_ends[1]] == orjson.dumps(records[5])
    every_tag = read_pool(path)
    assert sorted({every_tag.tags[j] for j in every_tag.tag_ids}) == ["a", "b", "zz"]


@pytest.mark.parametrize(
    "bad_line, message",
    [
        (b'{"annotation": ', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (orjson.dumps({"annotation": {"instag": {"x": 1}, "deita": {"q": 1}}}), "KeyError"),
        (orjson.dumps(annotated([], [], [])), "ZeroDivisionError"),
        (orjson.dumps(annotated([], [1, 2], [1])), "IndexError"),
    ],
)
def test_unreadable_lines_name_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "pool.jsonl"
    good = orjson.dumps(annotated(["a"], [1.0], [1.0]))
    path.write_bytes(good + b"\n" + good + b"\n" + bad_line + b"\n" + good + b"\n")
    with pytest.raises(ValueError, match=rf"pool\.jsonl:3: .*{message}"):
        read_pool(path)


def test_output_is_byte_identical_across_runs(tmp_path):
    records = [annotated(random.Random(i).sample("abcdefgh", 3), [1.0 + i % 7], [2.0 + i % 3], _id=i, text="é \u2028") for i in range(200)]
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    embeddings = np.random.default_rng(0).normal(size=(8, 4))
    embed = embedding_lookup(list("abcdefgh"), embeddings)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    run_sample(pool, first, 50, embed_labels=embed, params=MigParams(tau=0.5))
    run_sample(pool, second, 50, embed_labels=embed, params=MigParams(tau=0.5))
    assert first.read_bytes() == second.read_bytes()
    assert len(first.read_bytes().splitlines()) == 50


def test_random_sampler_is_the_reference_one(tmp_path):
    assert random_select(1000, 30).tolist() == random.Random(42).sample(range(1000), 30)
    assert sorted(random_select(10, 20).tolist()) == list(range(10))
    records = [{"_id": "dropped"}] + [annotated(["a"], [1.0], [1.0], _id=f"r{i}") for i in range(40)]
    out = tmp_path / "out.jsonl"
    run_sample(write_jsonl(tmp_path / "pool.jsonl", records), out, 5, sampler_type="random")
    assert selected_ids(out) == [f"r{i}" for i in random.Random(42).sample(range(40), 5)]
