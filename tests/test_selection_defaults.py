"""One set of MIG/TAGS defaults: the core's params, the Dagster config and the CLI flags agree, and
the one request builder turns flat settings into the core's params."""

import dataclasses

import pytest

from mig_assets.cli import build_parser
from mig_assets.core.mig.problem import MigParams
from mig_assets.core.selection.request import SELECTION_DEFAULTS, Budget, build_request
from mig_assets.core.tags.params import TagsParams
from mig_assets.defs.selection.assets import SelectionConfig
from mig_assets.defs.selection.label_graph import LabelGraphConfig


def test_config_defaults_are_the_cores():
    config = SelectionConfig()
    request = config.request("tags")
    assert request.mig == MigParams() and request.tags == TagsParams()
    assert {name: getattr(config, name) for name in SELECTION_DEFAULTS} == SELECTION_DEFAULTS
    assert TagsParams().align == config.align == "none"  # what asset users always got
    assert LabelGraphConfig().tau == MigParams().tau


def test_cli_flags_default_to_the_cores():
    args = build_parser().parse_args(["sample", "pool.jsonl"])
    core = MigParams()
    flags = {
        "sim_threshold": "tau",
        "prop_weight": "prop_weight",
        "phi_type": "phi",
        "phi_a": "phi_a",
        "phi_b": "phi_b",
        "phi_alpha": "phi_alpha",
        "gain": "gain",
    }
    assert {flag: getattr(args, flag) for flag in flags} == {flag: getattr(core, field) for flag, field in flags.items()}
    assert build_parser().parse_args(["compare"]).seed == SELECTION_DEFAULTS["seed"]


def test_build_request_reads_flat_settings_once():
    request = build_request("tags", {"budget_count": 7, "phi_b": 0.5, "align": "penalty", "gamma": 0.25, "seed": 3})
    assert request.budget == Budget(count=7) and request.budget.describe() == "count=7"
    assert request.mig.phi_b == request.tags.phi_b == 0.5  # φ is shared by MIG and TAGS
    assert request.tags.align == "penalty" and request.gamma == 0.25 and request.seed == 3
    assert dataclasses.replace(request.mig, phi_b=MigParams().phi_b) == MigParams()
    with pytest.raises(ValueError, match="unknown selection settings \\['temperature'\\]"):
        build_request("mig", {"temperature": 1.0})
