"""Named selection specs: the subsets a user wants, declared once in a YAML file.

    selections:
      - name: mig_5pct
        method: mig                 # mig | tags | random | top_quality | deita | instag | kcenter
        budget: {fraction: 0.05}    # or {count: 500} or {tokens: 20000}
        params: {prop_weight: 1.0, phi_b: 0.8}
        seed: 42
        constraints: {must_exclude: {where: "shard LIKE 'bench%'"}, max_share: {by: source_file, share: 0.3}}

``constraints`` (``core/selection/constraint_spec.py``) steer MIG and TAGS inside their greedy;
``stability: {mode: warm, max_churn: 0.05, margin: 0.1}`` (``core/selection/stability.py``) bounds
the churn of a re-selection.
Each spec becomes its own selection asset with its own history in the UI.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mig_assets.core.selection.constraint_spec import ConstraintSpec, parse_constraints
from mig_assets.core.selection.request import METHODS, SelectionRequest, build_request
from mig_assets.core.selection.stability import StabilitySpec, parse_stability

BUDGET_KINDS = ("count", "fraction", "tokens")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class SelectionSpec:
    name: str
    method: str = "mig"
    budget: dict = field(default_factory=lambda: {"fraction": 0.05})
    params: dict = field(default_factory=dict)
    seed: int = 42
    description: str = ""
    constraints: ConstraintSpec | None = None
    stability: StabilitySpec | None = None

    def settings(self) -> dict:
        """The flat settings the spec declares: its budget as ``budget_<kind>``, its params and its seed."""
        return {f"budget_{kind}": value for kind, value in self.budget.items()} | dict(self.params) | {"seed": self.seed}

    def request(self) -> SelectionRequest:
        """The selection request of the spec as declared (no run config on top): what its asset runs by default."""
        return build_request(self.method, self.settings())

    def steering(self) -> dict:
        """The constraints and the stability option as plain values (manifest, metadata)."""
        return {
            "constraints": self.constraints.describe() if self.constraints is not None else {},
            "stability": dataclasses.asdict(self.stability) if self.stability is not None else None,
        }


def parse_specs(document: dict, source: str = "<specs>", base_dir: Path = Path(".")) -> list[SelectionSpec]:
    """Specs of a ``selections:`` document; relative paths in it (constraint ids files) are read from ``base_dir``."""
    entries = (document or {}).get("selections")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{source}: expected a non-empty `selections:` list")
    specs, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"{source}: selections[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping")
        unknown = set(entry) - {"name", "method", "budget", "params", "seed", "description", "constraints", "stability"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        name = entry.get("name", "")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{where}.name: {name!r} must be lower_snake_case (it becomes an asset key)")
        if name in seen:
            raise ValueError(f"{where}.name: {name!r} is declared twice")
        seen.add(name)
        method = entry.get("method", "mig")
        if method not in METHODS:
            raise ValueError(f"{where}.method: {method!r} is not one of {', '.join(METHODS)}")
        budget = entry.get("budget", {"fraction": 0.05})
        if not isinstance(budget, dict) or len(budget) != 1 or next(iter(budget)) not in BUDGET_KINDS:
            raise ValueError(f"{where}.budget: expected exactly one of {', '.join(BUDGET_KINDS)}, got {budget!r}")
        params = entry.get("params", {}) or {}
        if not isinstance(params, dict):
            raise ValueError(f"{where}.params: expected a mapping")
        constraints = None
        if entry.get("constraints"):
            if method not in ("mig", "tags"):
                raise ValueError(f"{where}.constraints: constraints steer the mig and tags greedy, not {method!r}")
            constraints = parse_constraints(entry["constraints"], f"{where}.constraints", base_dir)
        stability = None
        if entry.get("stability"):
            stability = parse_stability(entry["stability"], f"{where}.stability")
            if stability.mode == "warm" and method not in ("mig", "tags"):
                raise ValueError(f"{where}.stability: a warm start steers the mig and tags greedy, not {method!r}")
        seed, description = int(entry.get("seed", 42)), str(entry.get("description", ""))
        specs.append(SelectionSpec(name, method, dict(budget), dict(params), seed, description, constraints, stability))
    return specs


def load_specs(path: str | Path) -> list[SelectionSpec]:
    path = Path(path)
    return parse_specs(yaml.safe_load(path.read_text(encoding="utf-8")), str(path), path.parent)
