"""What-if sweep core: prefixes equal separate runs, Pareto flags by brute force, the interactive page."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from mig_assets.core.mig.algorithm import select
from mig_assets.core.mig.problem import MigParams, phi
from mig_assets.core.outputs.sweep_page import sweep_html, sweep_pngs
from mig_assets.core.selection.sweep import METRICS, SweepGrid, pareto_flags, sweep_mig, sweep_tags


def pool(seed: int = 0, n: int = 400, labels: int = 60):
    rng = np.random.default_rng(seed)
    Y = sp.csr_array(sp.random_array((n, labels), density=0.05, rng=rng, format="csr", data_sampler=lambda size: rng.uniform(0.5, 9, size)), dtype=np.float32)
    return Y, rng.uniform(1, 36, n), rng.integers(20, 400, n)


def test_each_point_is_the_greedy_at_its_budget_measured_on_the_spec_scale():
    Y, scores, tokens = pool()
    grid = SweepGrid(budgets=({"count": 10}, {"fraction": 0.1}, {"tokens": 5000}), phi_b=(0.5, 0.8))
    points = sweep_mig(Y, scores, tokens, grid, MigParams())
    assert len(points) == 6
    for point in points:
        if point["budget"].startswith("tokens"):
            assert point["tokens"] <= 5000
            continue
        alone = select(Y, point["picks"], MigParams(phi_b=point["phi_b"])).order  # a separate run at this budget
        assert point["picks"] == (10 if point["budget"] == "count=10" else 40)
        coverage = np.asarray(Y[alone].sum(axis=0), np.float64).ravel()
        assert point["objective"] == pytest.approx(float(phi(coverage, MigParams()).sum()))
        assert point["coverage"] == pytest.approx((coverage > 0).mean())
        assert point["mean_quality"] == pytest.approx(scores[alone].mean())
        assert point["tokens"] == tokens[alone].sum()


def test_pareto_flags_match_brute_force():
    rng = np.random.default_rng(3)
    points = [
        {"method": "mig", "tokens": int(t), "objective": float(o), "coverage": float(c), "mean_quality": 1.0, "kl": float(k)}
        for t, o, c, k in rng.integers(0, 6, (30, 4))
    ]
    pareto_flags(points)
    for metric, higher in METRICS.items():
        for p in points:
            better = [q for q in points if q is not p and q["tokens"] <= p["tokens"] and (q[metric] >= p[metric] if higher else q[metric] <= p[metric])]
            dominated = any(q["tokens"] < p["tokens"] or q[metric] != p[metric] for q in better)
            assert p[f"frontier_{metric}"] == (not dominated), (metric, p)


def test_page_shows_parameters_on_hover_and_pngs_exist():
    Y, scores, tokens = pool(1)
    points = sweep_mig(Y, scores, tokens, SweepGrid(budgets=({"count": 5}, {"count": 20}), phi_b=(0.6, 0.9)))
    page = sweep_html(points, "sweep of mig_selection")
    assert page.startswith("<!doctype html>") and "plotly" in page and "mig phi_b=0.6" in page and "budget %{customdata[0]}" in page
    images = sweep_pngs(points)
    assert set(images) == {"sweep_objective", "sweep_coverage", "sweep_mean_quality"}
    assert all(png.startswith(b"\x89PNG") for png in images.values())


def test_tags_sweep_over_lam_reports_leaf_coverage_and_kl():
    from mig_assets.core.tags.information import kl_divergence
    from mig_assets.core.tags.modes import select as tags_select
    from mig_assets.core.tags.params import TagsParams
    from tests.core.test_constraints import tags_problem

    problem, target, _ = tags_problem(2, n_samples=300)
    rng = np.random.default_rng(0)
    scores, tokens = rng.uniform(1, 36, 300), rng.integers(20, 400, 300)
    points = sweep_tags(problem, scores, tokens, SweepGrid(budgets=({"count": 15}, {"count": 40}), lam=(0.5, 5.0)), TagsParams(align="penalty"), target)
    assert len(points) == 4 and {p["lam"] for p in points} == {0.5, 5.0}
    for point in points:
        alone = tags_select(problem, point["picks"], TagsParams(align="penalty", lam=point["lam"]), target)
        mass = np.asarray(problem.leaves[alone.order].sum(axis=0)).ravel()
        assert point["kl"] == pytest.approx(kl_divergence(target, mass, 1e-3))
        assert point["coverage"] == pytest.approx((mass > 0).mean()) and point["objective"] == pytest.approx(alone.objective[-1])
    strong = {p["picks"]: p["kl"] for p in points if p["lam"] == 5.0}
    weak = {p["picks"]: p["kl"] for p in points if p["lam"] == 0.5}
    assert strong[40] <= weak[40]  # a larger lambda pulls the selection toward the target
    assert "tags (penalty) lam=5" in sweep_html(points, "tags sweep")
