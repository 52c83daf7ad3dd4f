"""One configuration: the settings file, environment overrides, validation, provenance, and the
rule that no other module reads the environment for project settings."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mig_assets.settings import (
    SETTINGS_FILE,
    SettingsError,
    load_settings,
    render_settings_file,
    write_settings_file,
)
from tests.conftest import REPO_ROOT


def test_defaults_without_a_file(tmp_path):
    settings = load_settings(tmp_path, environ={})
    assert settings.values["tagger"]["backend"] == "imported" and settings.reselect_cron == "0 3 * * *"
    assert set(settings.origins.values()) == {"default"}
    assert settings.selections_path.name == "selections.yaml" and settings.selections_path.exists()


def test_file_then_environment_then_default(tmp_path):
    (tmp_path / SETTINGS_FILE).write_text(
        "tagger:\n  backend: openai\n  base_url: http://127.0.0.1:9/v1\n  max_tokens: 64\n"
        "target:\n  filter: category=coding, math\nautomation:\n  reselect_cron: '0 4 * * *'\n"
    )
    settings = load_settings(tmp_path, environ={"MIG_TAGGER_MAX_TOKENS": "80", "MIG_RAY_NUM_ACTORS": "3"})
    assert settings.values["tagger"]["backend"] == "openai" and settings.origins["tagger.backend"] == "file"
    assert settings.values["tagger"]["max_tokens"] == 80 and settings.origins["tagger.max_tokens"] == "env:MIG_TAGGER_MAX_TOKENS"
    assert settings.values["execution"]["num_actors"] == 3 and settings.origins["execution.num_actors"] == "env:MIG_RAY_NUM_ACTORS"
    assert settings.values["tagger"]["prompt_version"] == "atomic-v1" and settings.origins["tagger.prompt_version"] == "default"
    assert settings.target.parsed_filter() == ("category", ["coding", "math"])
    assert settings.reselect_cron == "0 4 * * *"
    # the resources are built from the same values
    from mig_assets.resources import build_resources

    resources = build_resources(settings)
    assert (resources["tagger"].backend, resources["tagger"].max_tokens, resources["execution"].num_actors) == ("openai", 80, 3)
    assert resources["warehouse"].mig_home == str(tmp_path.resolve())


def test_legacy_variable_names_still_override(tmp_path):
    settings = load_settings(tmp_path, environ={"MIG_SCORER_PROMPT": "deita-chat-v1", "MIG_EMBEDDING_MODEL": "/models/e5", "MIG_SELECTIONS": "specs.yaml"})
    assert settings.values["scorer"]["prompt_version"] == "deita-chat-v1"
    assert settings.values["embedder"]["model"] == "/models/e5"
    assert settings.selections_path == (tmp_path / "specs.yaml").resolve()


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        ("tagger:\n  backnd: vllm\n", {}, r"mig.yaml: tagger.backnd: unknown key; allowed keys: backend, "),
        ("tagers:\n  backend: vllm\n", {}, r"mig.yaml: unknown section 'tagers'; allowed: tagger, "),
        ("tagger:\n  backend: llama\n", {}, r"mig.yaml: tagger.backend: 'llama' is not allowed; expected one of imported, vllm, openai"),
        ("tagger:\n  max_tokens: lots\n", {}, r"mig.yaml: tagger.max_tokens: Input should be a valid integer"),
        ("", {"MIG_EXECUTION": "spark"}, r"environment variable MIG_EXECUTION: execution.mode: 'spark' is not allowed; expected one of local, ray"),
        ("tagger: [1, 2]\n", {}, r"mig.yaml: tagger: expected a mapping"),
        ("tagger:\n  backend: [unclosed\n", {}, r"mig.yaml: not valid YAML"),
    ],
)
def test_bad_settings_are_clear_errors(tmp_path, text, environ, expected):
    (tmp_path / SETTINGS_FILE).write_text(text)
    with pytest.raises(SettingsError, match=expected.replace("[", r"\[")):
        load_settings(tmp_path, environ=environ)


def test_rendered_file_round_trips_and_updates_keep_other_keys(tmp_path):
    (tmp_path / SETTINGS_FILE).write_text(render_settings_file())
    assert load_settings(tmp_path, environ={}).values == load_settings(tmp_path / "none", environ={}).values
    write_settings_file(tmp_path, {"target.path": "targets/mt_bench.jsonl"})
    write_settings_file(tmp_path, {"tagger.backend": "vllm"})
    settings = load_settings(tmp_path, environ={})
    assert (settings.values["tagger"]["backend"], settings.target.path) == ("vllm", "targets/mt_bench.jsonl")
    with pytest.raises(SettingsError, match="'nope' is not allowed"):
        write_settings_file(tmp_path, {"tagger.backend": "nope"})
    assert load_settings(tmp_path, environ={}).values["tagger"]["backend"] == "vllm"  # a refused update writes nothing


def run_cli(args, home, **env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MIG_") and k != "DAGSTER_HOME"} | {"MIG_HOME": str(home), **env}
    return subprocess.run([sys.executable, "-m", "mig_assets.cli", *args], cwd=REPO_ROOT, env=environ, capture_output=True, text=True, timeout=300)


def test_init_and_config_print_values_with_their_origin(tmp_path):
    home = tmp_path / "home"
    done = run_cli(["init"], home)
    assert done.returncode == 0, done.stderr
    assert (home / SETTINGS_FILE).exists() and (home / "dagster" / "dagster.yaml").exists() and (home / "pool" / "incoming").is_dir()
    write_settings_file(home, {"tagger.backend": "vllm"})
    assert run_cli(["init"], home).returncode == 0  # kept, not overwritten
    shown = run_cli(["config"], home, MIG_TAGGER_MAX_TOKENS="64", MIG_TAGER_MODEL="typo")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert 'tagger.backend = "vllm"  (file)' in lines
    assert "tagger.max_tokens = 64  (env:MIG_TAGGER_MAX_TOKENS)" in lines
    assert 'automation.reselect_cron = "0 3 * * *"  (default)' in lines
    assert "MIG_TAGER_MODEL is set but overrides no setting" in shown.stderr
    as_json = json.loads(run_cli(["config", "--json"], home).stdout)
    assert as_json["values"]["tagger"]["backend"] == "vllm" and as_json["origins"]["tagger.backend"] == "file"
    (home / SETTINGS_FILE).write_text("tagger:\n  backend: gpt\n")
    broken = run_cli(["config"], home)
    assert broken.returncode == 2 and "tagger.backend: 'gpt' is not allowed" in broken.stderr and "Traceback" not in broken.stderr


# Variables other modules may read: Dagster's own and the engines', never a project setting.
ALLOWED_ELSEWHERE = {"DAGSTER_HOME", "RAY_ADDRESS", "VLLM_CPU_KVCACHE_SPACE", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"}


def environ_reads(path: Path) -> list[tuple[int, str]]:
    """(line, variable) of every ``os.environ`` / ``os.getenv`` use in a module ('?' when not a literal)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        target = None
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            target = node.slice
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.get", "os.getenv", "os.environ.setdefault", "os.environ.pop"):
            target = node.args[0] if node.args else None
        elif isinstance(node, ast.Compare) and any(ast.unparse(c) == "os.environ" for c in node.comparators):
            target = node.left
        if target is not None:
            found.append((node.lineno, target.value if isinstance(target, ast.Constant) else "?"))
    return found


def test_no_other_module_reads_the_environment_for_project_settings():
    offenders = []
    for path in sorted((REPO_ROOT / "mig_assets").rglob("*.py")):
        if path.name == "settings.py":
            continue
        for line, variable in environ_reads(path):
            # '?' is a variable name held in configuration (api_key_env, the Ray workers' pass-through list)
            if variable != "?" and variable not in ALLOWED_ELSEWHERE:
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{line} reads {variable}")
    assert offenders == []
