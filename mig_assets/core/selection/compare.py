"""Metrics to compare selections of the same pool (MIG, TAGS, baselines), on numpy/scipy arrays.

A selection is given as pool row indices (any order; every metric is a function of the set). Rows must
be distinct integers in [0, N). Objectives reuse ``core/mig/algorithm.py`` and ``core/tags/information.py``, so a
selection's value here is the value its own greedy maximised.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp

from mig_assets.core.mig.problem import MigParams, phi, propagated_matrix
from mig_assets.core.selection.baselines import unit_rows
from mig_assets.core.selection.inputs import SelectionInputs
from mig_assets.core.selection.request import SelectionRequest
from mig_assets.core.tags import information as tags_information
from mig_assets.core.tags.params import TagsParams
from mig_assets.core.tags.problem import TagsProblem, canonical_matrix
from mig_assets.core.validation import check_embeddings, check_scores, first_few


def _check_rows(rows, n_samples: int | None) -> np.ndarray:
    """Rows as int64; ValueError unless they are distinct integers (in [0, n_samples) when given)."""
    rows = np.asarray(rows)
    if rows.size == 0:
        return np.empty(0, dtype=np.int64)
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise ValueError(f"rows must be a 1-D array of integer row indices, got dtype {rows.dtype}, shape {rows.shape}")
    rows = rows.astype(np.int64)
    outside = rows[(rows < 0) | (rows >= n_samples)] if n_samples is not None else rows[rows < 0]
    if len(outside):
        bound = "N" if n_samples is None else n_samples
        raise ValueError(f"rows must lie in [0, {bound}); got {first_few(outside.tolist())}")
    values, counts = np.unique(rows, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"rows must be distinct; repeated {first_few(values[counts > 1].tolist())}")
    return rows


def mig_objective(Y, rows, params: MigParams = MigParams()) -> float:
    """MIG's information E(S) = Σ_l φ(s_l), s = Σ_{i∈S} Y_i (Y = X P, N×L; see :func:`mig.propagate`).

    As in :func:`mig.select`'s ``objective``, uncovered labels count φ(0); s is summed in float64 from
    Y's float32 values, so it matches the greedy's last ``objective`` to float32 rounding.
    """
    Y = propagated_matrix(Y)
    rows = _check_rows(rows, Y.shape[0])
    coverage = np.asarray(Y[rows].astype(np.float64).sum(axis=0)).ravel()
    return float(phi(coverage, params).sum())


def tags_objective(problem: TagsProblem, rows, params: TagsParams = TagsParams()) -> float:
    """TAGS' information E(S) = Σ_v β_{h(v)}·[φ(x_v(S)) − φ(0)]: :func:`tags_information.objective`, params' φ."""
    rows = _check_rows(rows, problem.n_samples)
    return tags_information.objective(problem, rows, params.phi_a, params.phi_b)


def _covered_fraction(matrix, rows, name: str) -> float:
    matrix = sp.csr_array(matrix)
    if matrix.shape[1] == 0:
        raise ValueError(f"{name} has no columns: coverage is undefined")
    rows = _check_rows(rows, matrix.shape[0])
    picked = matrix[rows]
    covered = np.unique(picked.indices[picked.data != 0])
    return len(covered) / matrix.shape[1]


def label_coverage(label_matrix, rows) -> float:
    """Fraction of labels (columns of the N×L ``label_matrix``) with a non-zero entry in a selected row.

    Pass MIG's X (each sample's own labels) for direct coverage, or Y = X P for labels reached by
    propagation. A label that no pool sample carries still counts in the denominator.
    """
    return _covered_fraction(label_matrix, rows, "label_matrix")


def leaf_coverage(leaf_matrix, rows) -> float:
    """Fraction of the knowledge tree's leaves (columns of TAGS' N×L leaf-weight matrix A) that a selected
    row grounds on (a_iℓ > 0)."""
    return _covered_fraction(leaf_matrix, rows, "leaf_matrix")


def mean_quality(scores, rows) -> float:
    """Mean score of the selected rows; NaN for an empty selection."""
    scores = check_scores(scores)
    rows = _check_rows(rows, len(scores))
    return float(scores[rows].mean()) if len(rows) else float("nan")


def embedding_diversity(embeddings, rows) -> float:
    """Mean pairwise cosine distance 1 − cos(e_i, e_j) over the m(m−1)/2 pairs of selected rows.

    Exact at any size in O(m·d), with no pair sampling: for L2-normalised rows u_i,
    Σ_{i≠j} cos = ‖Σ_i u_i‖² − Σ_i ‖u_i‖², computed in float64. A zero row has cosine 0 with every row
    (distance 1). NaN when fewer than two rows are selected.
    """
    embeddings = check_embeddings(embeddings)
    rows = _check_rows(rows, len(embeddings))
    m = len(rows)
    if m < 2:
        return float("nan")
    unit = unit_rows(embeddings[rows], np.float64)
    total = unit.sum(axis=0)
    off_diagonal = float(total @ total) - float(np.einsum("ij,ij->", unit, unit))
    return 1.0 - off_diagonal / (m * (m - 1))


def _leaf_mass(leaf_matrix, rows) -> np.ndarray:
    """m_ℓ(S) = Σ_{i∈S} a_iℓ (L,), the selection's mass per leaf."""
    A = canonical_matrix(leaf_matrix, name="leaf_matrix")
    rows = _check_rows(rows, A.shape[0])
    return np.asarray(A[rows].sum(axis=0)).ravel()


def kl_to_target(leaf_matrix, rows, target, eps: float = 1e-3) -> float:
    """KL(t ‖ p_S) in nats, p_S(ℓ) = (m_ℓ + ε)/(M + εL): :func:`tags_information.kl_divergence` of the selection's
    leaf mass m_ℓ(S) = Σ_{i∈S} a_iℓ. ``eps`` = TagsParams' default ε."""
    mass = _leaf_mass(leaf_matrix, rows)
    target = np.asarray(target, dtype=np.float64)
    if target.shape != mass.shape:
        raise ValueError(f"target must have one weight per leaf ({len(mass)}), got shape {target.shape}")
    return tags_information.kl_divergence(target, mass, eps)


def overlap(orders: Mapping[str, np.ndarray]) -> dict[tuple[str, str], float]:
    """Jaccard |A ∩ B| / |A ∪ B| of every ordered pair of selections (symmetric; (a, a) is 1.0).

    Two empty selections have Jaccard 1.0 (they are the same set).
    """
    sets = {name: frozenset(_check_rows(rows, None).tolist()) for name, rows in orders.items()}
    result = {}
    for a, rows_a in sets.items():
        for b, rows_b in sets.items():
            union = len(rows_a | rows_b)
            result[a, b] = len(rows_a & rows_b) / union if union else 1.0
    return result


def compare_selections(
    orders: Mapping[str, np.ndarray],
    *,
    Y=None,
    mig_params: MigParams | None = None,
    tags_problem: TagsProblem | None = None,
    tags_params: TagsParams | None = None,
    leaf_matrix=None,
    target=None,
    scores=None,
    embeddings=None,
    label_matrix=None,
) -> list[dict]:
    """One row per method (in ``orders``' order) with every metric its inputs allow, None where one is absent.

    Keys: method, size, mig_objective (needs Y; mig_params default MigParams()), tags_objective (needs
    tags_problem; φ from tags_params, default TagsParams()), label_coverage (needs label_matrix),
    leaf_coverage and kl_to_target (need leaf_matrix, defaulting to tags_problem.leaves; KL also needs
    target, with ε = tags_params.eps), mean_quality (needs scores), embedding_diversity (needs
    embeddings) and jaccard: {other method: Jaccard overlap} (see :func:`overlap`).
    """
    mig_params = mig_params or MigParams()
    tags_params = tags_params or TagsParams()
    if leaf_matrix is None and tags_problem is not None:
        leaf_matrix = tags_problem.leaves
    jaccard = overlap(orders)
    table = []
    for method, rows in orders.items():
        table.append(
            {
                "method": method,
                "size": len(rows),
                "mig_objective": None if Y is None else mig_objective(Y, rows, mig_params),
                "tags_objective": None if tags_problem is None else tags_objective(tags_problem, rows, tags_params),
                "label_coverage": None if label_matrix is None else label_coverage(label_matrix, rows),
                "leaf_coverage": None if leaf_matrix is None else leaf_coverage(leaf_matrix, rows),
                "kl_to_target": None if leaf_matrix is None or target is None else kl_to_target(leaf_matrix, rows, target, tags_params.eps),
                "mean_quality": None if scores is None else mean_quality(scores, rows),
                "embedding_diversity": None if embeddings is None else embedding_diversity(embeddings, rows),
                "jaccard": {other: jaccard[method, other] for other in orders if other != method},
            }
        )
    return table


COMPARISON_FRACTION = 0.1  # the comparison's default budget: this share of the pool per method


def run_comparison(request: SelectionRequest, inputs: SelectionInputs) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Every method the inputs allow, at the one budget of ``request`` (a
    :class:`~mig_assets.core.selection.request.SelectionRequest`) on ``inputs.pool`` (a
    :class:`~mig_assets.core.selection.inputs.SelectionInputs`), measured by :func:`compare_selections`:
    mig (needs the graph), tags (needs the tree; unaligned), tags_aligned (also the target, aligned by
    ``request.tags.align``, penalty when that is "none"), and the baselines (deita and kcenter need
    the pool's embeddings). Label coverage counts the graph labels a selected sample carries itself.
    Returns the table (with each method's selection seconds) and the orders."""
    import dataclasses
    import time

    from mig_assets.core.selection.request import BASELINES, EMBEDDING_METHODS
    from mig_assets.core.selection.run import (
        label_matrix_rows,
        mig_matrix,
        run_selection,
        tags_problem,
    )

    pool, graph, tree, target = inputs.pool, inputs.graph, inputs.tree, inputs.target
    tags_params = dataclasses.replace(request.tags, align="none")
    aligned_params = dataclasses.replace(request.tags, align="penalty" if request.tags.align == "none" else request.tags.align)
    runs: dict[str, SelectionRequest] = {}
    if graph is not None:
        runs["mig"] = request.replace(method="mig")
    if tree is not None:
        runs["tags"] = request.replace(method="tags", tags=tags_params)
        if target is not None:
            runs["tags_aligned"] = request.replace(method="tags", tags=aligned_params)
    for method in BASELINES:
        if method not in EMBEDDING_METHODS or pool.embeddings is not None:
            runs[method] = request.replace(method=method)
    orders, seconds = {}, {}
    for name, method_request in runs.items():
        started = time.perf_counter()
        orders[name] = run_selection(method_request, inputs).order
        seconds[name] = time.perf_counter() - started
    Y = label_matrix = problem = None
    if graph is not None:
        Y = mig_matrix(pool, graph, request.mig)
        indptr, indices = label_matrix_rows(pool.tag_array, graph.labels)
        label_matrix = sp.csr_array((np.ones(len(indices)), indices, indptr), shape=(len(pool.sample_ids), len(graph.labels)))
    if tree is not None:
        problem = tags_problem(pool, tree, request.gamma, request.level_weights)
    table = compare_selections(
        orders,
        Y=Y,
        mig_params=request.mig,
        tags_problem=problem,
        tags_params=tags_params,
        target=target,
        scores=pool.scores,
        embeddings=pool.embeddings,
        label_matrix=label_matrix,
    )
    for row in table:
        row["seconds"] = round(seconds[row["method"]], 4)  # timer noise below 0.1 ms
    return table, orders


GREEDY_BOUND = 1 - 1 / np.e  # greedy with exact marginal gains on a monotone submodular f: f(S_k) >= (1 - 1/e) f(OPT_k)


def guarantees(table: list[dict], mig_params: MigParams = MigParams()) -> list[dict]:
    """What the comparison may claim about each method's objective, and whether the figures bear it out.

    Both objectives are monotone submodular (φ concave and non-decreasing, coverage linear in the
    set, non-negative weights), so a greedy with **exact** marginal gains reaches at least 1 − 1/e of
    the best set of its size, hence of every other method's set of that size (Nemhauser et al. 1978).
    That is all a greedy guarantees: another method may still score higher on its measure.

    - mig, gain "exact": E(S) ≥ (1 − 1/e) × max E over the others (checked: ``holds``).
    - mig, gain "gradient" (default): picks by the first-order gain Σ_l φ'(s_l) Y_il, an approximation
      of the marginal gain: no bound is claimed (``holds`` None); the row says where it ranks on E(S).
    - tags (unaligned, exact lazy greedy): tags_objective ≥ (1 − 1/e) × the others' (checked).
    - tags_aligned maximizes E(S)/E(pool) − λ KL, not either column: nothing claimed.

    Returns one row per claim: method, measure, claim (a sentence), holds (True/False, None when
    nothing is claimed), rank (1 = highest on the measure among methods that have it).
    """
    rows = []
    for method, measure in (("mig", "mig_objective"), ("tags", "tags_objective")):
        mine = next((r for r in table if r["method"] == method and r.get(measure) is not None), None)
        if mine is None:
            continue
        others = [r[measure] for r in table if r["method"] != method and r.get(measure) is not None]
        rank = 1 + sum(value > mine[measure] for value in others)
        best_other = max(others, default=float("-inf"))
        if method == "mig" and mig_params.gain != "exact":
            claim = (
                f"mig ranks by the first-order gain sum_l phi'(s_l) Y_il (gain={mig_params.gain}), an approximation of "
                f"the marginal gain of E(S): no bound on E(S) is claimed; it ranks {rank} of {len(others) + 1} here"
            )
            holds = None
        else:
            claim = (
                f"{method}'s greedy uses exact marginal gains of {measure} (monotone submodular): it is at least "
                f"1 - 1/e = {GREEDY_BOUND:.3f} x every other method's {measure} at this budget; it ranks {rank} of {len(others) + 1}"
            )
            holds = bool(mine[measure] >= GREEDY_BOUND * best_other) if others else True
        rows.append({"method": method, "measure": measure, "claim": claim, "holds": holds, "rank": rank})
    return rows
