"""What a warm TAGS re-selection (``core/selection/stability.py``) judges its swaps by, per align mode:
the objective the mode's greedy maximises and the mode's own feasibility rule.

  none, hard, quota: the information E(S) = Σ_v β_v·[φ(x_v) − φ(0)] over the path vectors;
  penalty: F(S) = E(S)/E(pool) − λ·KL(t ‖ p_S), the greedy's objective. Up to a constant,
      −λ·KL = λ·Σ_ℓ t_ℓ ln(m_ℓ + ε) − λ·ln(M + εL): two more separable parts, over the leaf
      matrix and over the column of row masses s_i, so every swap's change of F is exact.
  hard: a swap may not take KL(t ‖ p_S) above the cap at the budget's last pick, δ_B (nor raise it
      when it is above already);
  quota: a swap may not take a primary leaf above its quota (nor further above it).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mig_assets.core.mig.problem import phi
from mig_assets.core.selection.constraints import Constraints
from mig_assets.core.selection.stability import SeparableObjective
from mig_assets.core.tags.constrained_rules import quota_plan
from mig_assets.core.tags.greedy import GreedyRun
from mig_assets.core.tags.information import kl_divergence
from mig_assets.core.tags.params import TagsSelection


class QuotaSwaps:
    """Quota mode's rule for swaps: picks per primary leaf stay within the quotas (or do not grow above them)."""

    def __init__(self, primary: np.ndarray, quotas: np.ndarray):
        self.primary, self.quotas = primary, quotas
        self.counts = np.zeros(len(quotas), np.int64)

    def start(self, rows: np.ndarray) -> None:
        leaves = self.primary[rows]
        self.counts = np.bincount(leaves[leaves >= 0], minlength=len(self.quotas))

    def admits(self, i: int, j: int) -> bool:
        leaf = self.primary[j]
        return bool(leaf < 0 or leaf == self.primary[i] or self.counts[leaf] < self.quotas[leaf])

    def swap(self, i: int, j: int) -> None:
        for row, step in ((i, -1), (j, +1)):
            if self.primary[row] >= 0:
                self.counts[self.primary[row]] += step


class CapSwaps:
    """Hard mode's rule for swaps: KL(t ‖ p_{S−i+j}) ≤ max(δ_B, KL(t ‖ p_S))."""

    def __init__(self, leaves: sp.csr_array, target: np.ndarray, eps: float, cap: float):
        self.leaves, self.target, self.eps, self.cap = leaves, target, eps, cap
        self.mass = np.zeros(leaves.shape[1])

    def _row(self, row: int) -> np.ndarray:
        return self.leaves[[row]].toarray().ravel()

    def start(self, rows: np.ndarray) -> None:
        self.mass = np.asarray(self.leaves[rows].sum(axis=0)).ravel()

    def admits(self, i: int, j: int) -> bool:
        now = kl_divergence(self.target, self.mass, self.eps)
        return kl_divergence(self.target, self.mass - self._row(i) + self._row(j), self.eps) <= max(self.cap, now)

    def swap(self, i: int, j: int) -> None:
        self.mass += self._row(j) - self._row(i)


def swap_terms(run: GreedyRun, constraints: Constraints) -> tuple[SeparableObjective, QuotaSwaps | CapSwaps | None]:
    """The objective and the rule a warm re-selection's swaps keep in the run's align mode (module notes)."""
    information = lambda x: phi(x, run.phi)  # noqa: E731
    if run.align != "penalty":
        objective = SeparableObjective([(run.U, information, run.w)])
    else:
        assert run.target is not None  # aligned modes have a target
        lam, smoothing = run.params.lam, run.params.eps * run.L
        objective = SeparableObjective(
            [
                (run.U, information, run.w / run.e_scale),
                (run.A, lambda m: np.log(m + run.params.eps), lam * run.target),
                (sp.csr_array(run.mass[:, None]), lambda M: np.log(M + smoothing), np.array([-lam])),
            ]
        )
    if run.align == "quota":
        return objective, QuotaSwaps(*quota_plan(run, constraints, check_pins=False))
    if run.align == "hard":
        assert run.target is not None
        return objective, CapSwaps(run.A, run.target, run.params.eps, run.params.kl_cap_at(run.k - 1, run.k))
    return objective, None


def selection_objective(run: GreedyRun, selection: TagsSelection) -> float:
    """The objective the run's greedy maximises, at the end of ``selection``: E(S), or in penalty mode
    E(S)/E(pool) − λ·KL(t ‖ p_S)."""
    if not len(selection.objective):
        return 0.0
    if run.align != "penalty":
        return float(selection.objective[-1])
    assert selection.kl is not None  # penalty mode has a target
    return float(selection.objective[-1] / run.e_scale - run.params.lam * selection.kl[-1])
