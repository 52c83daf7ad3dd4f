"""What a TAGS selection takes (:class:`TagsParams`, ``shared/specs/tags.md`` §1.10) and what it returns
(:class:`TagsSelection`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from mig_assets.core.mig.problem import MigParams

Align = Literal["none", "penalty", "hard", "quota"]


@dataclass(frozen=True)
class TagsParams:
    """Hyperparameters of the TAGS greedy [R] (spec §1.10).

    phi_a, phi_b: φ(x) = (x + a)^b.
    align: used when a target is given: "none" (only report KL), "penalty", "hard" or "quota".
    lam: λ of the penalty, on E(S)/E(pool) − λ·KL(t ‖ p_S).
    eps: smoothing ε of p_S.
    kl_cap, kl_cap_start, kl_cap_decay: hard mode's cap δ_k = δ + (δ₀ − δ)·max(0, 1 − k/(decay·B)).
    """

    phi_a: float = 1e-6
    phi_b: float = 0.8
    align: Align = "none"
    lam: float = 1.0
    eps: float = 1e-3
    kl_cap: float = 0.1
    kl_cap_start: float = 1.0
    kl_cap_decay: float = 0.5

    def __post_init__(self) -> None:
        MigParams(phi_a=self.phi_a, phi_b=self.phi_b)  # validates φ
        if self.align not in ("none", "penalty", "hard", "quota"):
            raise ValueError(f"align must be 'none', 'penalty', 'hard' or 'quota', got {self.align!r}")
        if not (np.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"lam must be finite and >= 0, got {self.lam}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if not (self.kl_cap >= 0 and self.kl_cap_start >= self.kl_cap and self.kl_cap_decay > 0):
            raise ValueError("need kl_cap >= 0, kl_cap_start >= kl_cap and kl_cap_decay > 0")

    @property
    def phi_params(self) -> MigParams:
        return MigParams(phi_a=self.phi_a, phi_b=self.phi_b)

    def kl_cap_at(self, pick: int, budget: int) -> float:
        span = self.kl_cap_decay * max(budget, 1)
        return self.kl_cap + (self.kl_cap_start - self.kl_cap) * max(0.0, 1.0 - pick / span)


@dataclass(frozen=True)
class TagsSelection:
    """Result of :func:`~mig_assets.core.tags.modes.select`; arrays are indexed by pick (k), node (V) or leaf (L).

    scores: what the greedy maximised at each pick (penalty: gain/E(pool) − λ·ΔKL; other modes: the
    gain); gains: the exact information gain E(S+i) − E(S); objective: E(S) after each pick;
    kl: KL(t ‖ p_S) after each pick (None without a target); top_nodes: the n_top nodes contributing
    most to each pick's gain (ties to the lowest node, −1 padded).
    """

    order: np.ndarray
    scores: np.ndarray
    gains: np.ndarray
    objective: np.ndarray
    kl: np.ndarray | None
    top_nodes: np.ndarray
    coverage: np.ndarray
    leaf_mass: np.ndarray
    align: str
    gain_evaluations: int
    info: dict = field(default_factory=dict)
