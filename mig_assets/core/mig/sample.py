"""The reference's ``mig sample`` command as one function: pool in, selected input lines out."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from mig_assets.core.mig.algorithm import random_select, select
from mig_assets.core.mig.problem import MigParams, build_problem, embedding_lookup
from mig_assets.core.mig.reference_jsonl import load_valid_tags, read_pool, write_selected


def load_label_embeddings(prefix: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read ``PREFIX.labels.json`` (a JSON list of labels) and ``PREFIX.emb.npy`` (row i = vector of labels[i]).

    The matrix is memory-mapped: only the rows of labels that occur get read.
    """
    labels_path, matrix_path = Path(f"{prefix}.labels.json"), Path(f"{prefix}.emb.npy")
    labels = json.loads(labels_path.read_bytes())
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ValueError(f"{labels_path}: expected a JSON list of strings")
    matrix = np.load(matrix_path, mmap_mode="r")
    if matrix.ndim != 2 or len(matrix) != len(labels):
        raise ValueError(f"{matrix_path}: expected a ({len(labels)}, D) matrix, got shape {matrix.shape}")
    return labels, matrix


def run_sample(
    pool_path: str | os.PathLike,
    out_path: str | os.PathLike,
    n: int,
    *,
    valid_tag_path: str | os.PathLike | None = None,
    label_embeddings_prefix: str | os.PathLike | None = None,
    embed_labels: Callable[[list[str]], np.ndarray] | None = None,
    sampler_type: Literal["mig", "random"] = "mig",
    params: MigParams = MigParams(),
    batch_size: int = 0,
) -> dict:
    """Select ``n`` records of a reference-schema pool and write their input lines, unchanged, in selection order.

    Labels come from ``valid_tag_path`` (every tag is valid when None); label vectors from
    ``label_embeddings_prefix`` (see :func:`load_label_embeddings`) or, failing that, from
    ``embed_labels(labels) -> (L, D) array``. The "random" sampler needs neither (the reference still
    builds the graph). ``batch_size`` only bounds the reference's memory and never changes its
    result, so it is accepted and ignored. With n ≥ the number of kept records every record is
    written. The same inputs always give a byte-identical output.

    Returns counts and per-phase wall times in seconds (parse, graph, select, write, total).
    """
    started = time.perf_counter()
    if sampler_type not in ("mig", "random"):
        raise ValueError(f"sampler_type must be 'mig' or 'random', got {sampler_type!r}")
    if sampler_type == "mig":
        if label_embeddings_prefix is not None:
            embed_labels = embedding_lookup(*load_label_embeddings(label_embeddings_prefix))
        elif embed_labels is None:
            raise ValueError("the mig sampler needs label_embeddings_prefix or embed_labels")

    valid_tags = load_valid_tags(valid_tag_path) if valid_tag_path is not None else None
    pool = read_pool(pool_path, valid_tags)
    if not len(pool):
        raise ValueError(f"{pool_path}: no record has a usable annotation ({pool.n_lines} lines read)")
    timings = {"parse": time.perf_counter() - started}
    stats = {"lines_read": pool.n_lines, "records_kept": len(pool), "records_dropped": pool.n_lines - len(pool)}

    if sampler_type == "random":
        order = random_select(len(pool), n)
    else:
        clock = time.perf_counter()
        assert embed_labels is not None  # checked above for the mig sampler
        problem = build_problem(pool.tag_indptr, pool.tag_ids, pool.tags, pool.scores, embed_labels, params)
        timings["graph"] = time.perf_counter() - clock
        clock = time.perf_counter()
        selection = select(problem.propagated, n, params)
        timings["select"] = time.perf_counter() - clock
        order = selection.order
        stats |= {
            "labels": len(problem.labels),
            "graph_edges": problem.graph.nnz,
            "propagated_nnz": problem.propagated.nnz,
            "gain_evaluations": selection.gain_evaluations,
        }

    clock = time.perf_counter()
    write_selected(pool, order, out_path)
    timings["write"] = time.perf_counter() - clock
    timings["total"] = time.perf_counter() - started
    return {**stats, "selected": len(order), "timings_s": timings}
