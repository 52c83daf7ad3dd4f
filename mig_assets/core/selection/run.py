"""Run a selection method over the warehouse's pool arrays, with any budget kind.

Plain module: a selection asset builds one :class:`~mig_assets.core.selection.request.SelectionRequest`,
loads the :class:`~mig_assets.core.selection.inputs.SelectionInputs`, calls :func:`run_selection` for
one :class:`SelectionOutcome` and persists it (core/selection/audit.py). Pool rows come in input
order, the MIG reference's: every method breaks ties to the earlier row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from mig_assets.core.mig.algorithm import random_select, select
from mig_assets.core.mig.constrained import select_constrained, warm_select
from mig_assets.core.mig.problem import MigParams, propagate, propagation_matrix, sample_label_matrix
from mig_assets.core.selection import baselines
from mig_assets.core.selection.budget import fit_token_budget, picks_for_tokens, resolve_count, token_prefix
from mig_assets.core.selection.constraint_spec import constraint_reasons
from mig_assets.core.selection.constraints import Constraints
from mig_assets.core.selection.inputs import LabelGraph, PoolArrays, SelectionInputs
from mig_assets.core.selection.request import BASELINES, EMBEDDING_METHODS, METHODS, SelectionRequest
from mig_assets.core.selection.stability import WarmResult, WarmStart, previous_first, warm_reasons, warm_token_picks


@dataclass
class SelectionOutcome:
    order: np.ndarray  # pool row indices, in pick order
    gains: np.ndarray  # gain at pick time (NaN for methods without gains)
    objective: np.ndarray  # MIG objective after each pick (NaN for methods without one)
    top_labels: list[list[str]] = field(default_factory=list)  # labels contributing most, per pick
    coverage: np.ndarray | None = None  # final s over the graph's labels (MIG), x over the tree's nodes (TAGS)
    gain_evaluations: int = 0
    kl: np.ndarray | None = None  # TAGS with a target: KL(target || selection) after each pick
    leaf_mass: np.ndarray | None = None  # TAGS: the selection's mass per leaf
    pool_leaf_mass: np.ndarray | None = None  # TAGS: the whole pool's mass per leaf
    sample_matrix: sp.csr_array | None = None  # rows summed into coverage (TAGS: U; MIG's Y is dropped once the picks are made)
    leaf_matrix: sp.csr_array | None = None  # TAGS: A, rows summed into leaf_mass
    stability: dict | None = None  # warm re-selection: churn against the previous version and a fresh greedy
    reasons: dict[int, str] = field(default_factory=dict)  # pool row -> why a constraint or the warm start added or dropped it
    steering: dict = field(default_factory=dict)  # the spec's constraints and stability option, as plain values (for the manifest)


def label_matrix_rows(tags: pa.ListArray, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """CSR offsets and column ids of each sample's tags (list<string>) that are graph labels (others
    are ignored; order and repeats kept). In Arrow: the tags flattened, looked up in ``labels``, counted per sample."""
    per_sample = tags
    column = pc.index_in(pc.list_flatten(per_sample), value_set=pa.array(labels, pa.string()))
    is_label = pc.is_valid(column)
    owner = pc.list_parent_indices(per_sample).filter(is_label).to_numpy()
    counts = np.bincount(owner, minlength=len(tags)) if len(tags) else np.zeros(0, np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, column.filter(is_label).to_numpy(zero_copy_only=False).astype(np.int64)


def run_selection(
    request: SelectionRequest, inputs: SelectionInputs, *, constraints: Constraints | None = None, warm: WarmStart | None = None
) -> SelectionOutcome:
    """Pick samples of ``inputs.pool`` by ``request.method`` within ``request.budget``: "mig" (over
    ``inputs.graph``), "tags", or a baseline of :data:`BASELINES` (random; top_quality; deita, the
    score-first filter at cosine ``request.diversity_threshold``; instag, complexity-first tag
    coverage; kcenter, farthest-first on the sample embeddings).

    TAGS uses ``inputs.tree``, ``request.tags`` (its alignment mode among them), the upward decay
    ``request.gamma``, the ``request.level_weights`` β and, to align or to report KL, ``inputs.target``.

    A token budget takes the longest prefix of the method's order whose tokens fit (greedy order is
    preserved; a later, cheaper sample never jumps ahead of a better one).

    ``constraints`` (pins, bans, caps, label bounds; ``core/selection/constraints.py``) act inside the
    MIG and TAGS greedy; ``warm`` re-selects from the previous version's picks with bounded churn
    (``core/selection/stability.py``). Under a token budget either is fitted by
    :func:`~mig_assets.core.selection.budget.fit_token_budget`: the pins' tokens count first, the
    kept picks are the longest prefix that fits, and the constraints and the churn cap hold on them.
    """
    pool, budget, method = inputs.pool, request.budget, request.method
    n_pool = len(pool.sample_ids)
    if n_pool == 0:
        raise ValueError("the pool is empty: ingest shards before selecting")
    active = constraints if constraints is not None and constraints.active else None  # an empty set is the plain greedy
    steered = active is not None or warm is not None
    if steered and method not in ("mig", "tags"):
        raise ValueError(f"constraints and warm starts steer the mig and tags greedy; not {method}")
    if budget.tokens is None:
        k = resolve_count(n_pool, budget.count, budget.fraction)
    else:  # an upper bound (a steered token budget is fitted inside the method, from its own bound)
        k = picks_for_tokens(pool.tokens, budget.tokens)
    fitted_tokens = budget.tokens if steered else None
    if method == "mig":
        outcome = _mig(pool, inputs.graph, k, request.mig, active, warm, fitted_tokens)
    elif method == "tags":
        outcome = _tags(pool, inputs.tree, k, request, inputs.target, active, warm, fitted_tokens)
    elif method in BASELINES:
        order = _baseline(method, pool, k, request.seed, request.diversity_threshold)
        outcome = SelectionOutcome(order, np.full(len(order), np.nan), np.full(len(order), np.nan))
    else:
        raise ValueError(f"unknown selection method {method!r}; expected one of {', '.join(METHODS)}")
    if budget.tokens is not None:
        keep = len(token_prefix(outcome.order, pool.tokens, budget.tokens))
        outcome.order, outcome.gains, outcome.objective = outcome.order[:keep], outcome.gains[:keep], outcome.objective[:keep]
        outcome.top_labels = outcome.top_labels[:keep]
        if outcome.kl is not None:
            outcome.kl = outcome.kl[:keep]
        if outcome.sample_matrix is not None:  # coverage and leaf mass of the prefix actually kept
            outcome.coverage = np.asarray(outcome.sample_matrix[outcome.order].sum(axis=0)).ravel()
        if outcome.leaf_matrix is not None:
            outcome.leaf_mass = np.asarray(outcome.leaf_matrix[outcome.order].sum(axis=0)).ravel()
    if method == "mig":
        outcome.sample_matrix = None  # Y, the largest array of the run: only TAGS's tree plot reads its matrix later
    return outcome


def _baseline(method: str, pool: PoolArrays, k: int, seed: int, diversity_threshold: float) -> np.ndarray:
    if method in EMBEDDING_METHODS and pool.embeddings is None:
        raise ValueError(f"{method} needs the sample embeddings: materialize sample_embeddings first")
    if method == "random":
        return random_select(len(pool.sample_ids), k, seed)
    if method == "top_quality":
        return baselines.top_quality(pool.scores, k)
    if method == "deita":
        return baselines.deita_filter(pool.scores, pool.embeddings, k, diversity_threshold)
    if method == "instag":
        return baselines.instag_sampling(pool.tags, k)
    return baselines.k_center_greedy(pool.embeddings, k, seed)


def mig_matrix(pool: PoolArrays, graph: LabelGraph | None, params: MigParams = MigParams()) -> sp.csr_array:
    """Y = X·P: the samples' label weights (quality-weighted) propagated over the label graph (spec of MIG)."""
    if graph is None:
        raise ValueError("MIG needs the label graph: materialize label_graph first")
    indptr, indices = label_matrix_rows(pool.tag_array, graph.labels)
    X = sample_label_matrix(indptr, indices, pool.scores, len(graph.labels), params.norm)
    return propagate(X, propagation_matrix(graph.weights, params.prop_weight)) if graph.labels else X


def steered_run(run_at, k: int, tokens: np.ndarray, token_budget: int | None, constraints: Constraints | None, warm: WarmStart | None):
    """``run_at(k)`` (a count budget), or the run :func:`fit_token_budget` fits to ``token_budget``; a
    warm start counts from :func:`warm_token_picks` (the previous picks that fit, not the cheapest
    samples) and keeps its picks :func:`previous_first` (after the pins)."""
    if token_budget is None:
        return run_at(k)
    constraints = constraints if constraints is not None else Constraints(len(tokens))
    if warm is None:
        return fit_token_budget(run_at, lambda run: run[0].order, tokens, token_budget, constraints)
    start = warm_token_picks(constraints, warm.previous_rows, tokens, token_budget)
    return fit_token_budget(run_at, lambda run: previous_first(run[0].order, warm.previous_rows), tokens, token_budget, constraints, start)


def _mig(
    pool: PoolArrays,
    graph: LabelGraph | None,
    k: int,
    params: MigParams,
    constraints: Constraints | None,
    warm: WarmStart | None,
    token_budget: int | None = None,
) -> SelectionOutcome:
    Y = mig_matrix(pool, graph, params)
    assert graph is not None  # mig_matrix refuses a missing graph

    def run_at(count: int):
        if warm is not None:
            return warm_select(Y, count, warm.previous_rows, warm.new_rows, warm.spec, constraints, params)
        if constraints is not None:
            return select_constrained(Y, count, constraints, params), None, None
        return select(Y, count, params), None, None

    result, how, report = steered_run(run_at, k, pool.tokens, token_budget, constraints, warm)
    reasons = steering_reasons(constraints, warm, how, result.order)
    top = [[graph.labels[j] for j in row if j >= 0] for row in result.top_labels.tolist()]
    return SelectionOutcome(
        result.order, result.gains, result.objective, top, result.coverage, result.gain_evaluations, sample_matrix=Y, stability=report, reasons=reasons
    )


def steering_reasons(constraints: Constraints | None, warm: WarmStart | None, how: WarmResult | None, order: np.ndarray) -> dict[int, str]:
    """The exact reasons a constraint (:func:`constraint_reasons`) or the warm start (:func:`warm_reasons`, which take precedence) gave rows."""
    reasons = constraint_reasons(constraints, order) if constraints is not None else {}
    if warm is not None and how is not None:
        reasons |= warm_reasons(how, warm.spec.margin, constraints.pinned if constraints is not None else np.empty(0, np.int64))
    return reasons


def tags_problem(pool: PoolArrays, tree, gamma: float = SelectionRequest.gamma, level_weights: str = SelectionRequest.level_weights):
    """The TAGS problem over the pool: each sample's tags grounded on their leaves (tags newer than the
    tree are left out), path vectors with upward decay ``gamma`` and level weights β."""
    from mig_assets.core.tags.problem import build_problem, leaf_weights

    if tree is None:
        raise ValueError("TAGS needs the knowledge tree: materialize knowledge_tree first")
    leaf_ids = tree.leaf_of(pc.list_flatten(pool.tag_array))  # -1: a tag newer than the tree
    indptr = np.concatenate([[0], np.cumsum(pc.list_value_length(pool.tag_array).to_numpy())]).astype(np.int64)
    A = leaf_weights(indptr, leaf_ids, tree.n_leaves)
    return build_problem(A, pool.scores, tree.parents, tree.levels, gamma=gamma, beta=level_weights)


def _tags(
    pool: PoolArrays,
    tree,
    k: int,
    request: SelectionRequest,
    target,
    constraints: Constraints | None,
    warm: WarmStart | None,
    token_budget: int | None = None,
) -> SelectionOutcome:
    """TAGS: tree-level information gain over the samples' leaves and their ancestors, aligned to
    ``target`` by ``request.tags.align`` (with align "none" a target only adds the KL curve), under ``constraints``."""
    from mig_assets.core.tags.constrained import select_constrained as tags_select_constrained
    from mig_assets.core.tags.constrained import warm_select as tags_warm_select
    from mig_assets.core.tags.modes import select as tags_select

    params = request.tags
    if params.align != "none" and target is None:
        raise ValueError(f"TAGS align={params.align!r} needs a target profile: materialize target_profile first")
    problem = tags_problem(pool, tree, request.gamma, request.level_weights)

    def run_at(count: int):
        if warm is not None:
            return tags_warm_select(problem, count, warm.previous_rows, warm.new_rows, warm.spec, constraints, params, target)
        if constraints is not None:
            return tags_select_constrained(problem, count, constraints, params, target), None, None
        return tags_select(problem, count, params, target), None, None

    result, how, report = steered_run(run_at, k, pool.tokens, token_budget, constraints, warm)
    reasons = steering_reasons(constraints, warm, how, result.order)
    top = [[tree.names[v] for v in row if v >= 0] for row in result.top_nodes.tolist()]
    return SelectionOutcome(
        result.order,
        result.gains,
        result.objective,
        top,
        result.coverage,
        result.gain_evaluations,
        kl=result.kl,
        leaf_mass=result.leaf_mass,
        pool_leaf_mass=np.asarray(problem.leaves.sum(axis=0)).ravel(),
        sample_matrix=problem.paths,
        leaf_matrix=problem.leaves,
        stability=report,
        reasons=reasons,
    )
