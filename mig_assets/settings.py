"""The project's settings: one file in ``MIG_HOME`` that every entry point reads the same way.

``MIG_HOME/mig.yaml`` (written with its defaults by ``mig-assets init``) holds every setting;
an environment variable overrides one key; what neither sets keeps its default. The CLI,
``dagster dev``, ``dg`` and the automation all call :func:`load_settings`, so two processes over
the same ``MIG_HOME`` agree unless one of them is given an override, and ``mig-assets config``
prints each value with where it came from.

``MIG_HOME`` itself (default ``./mig_home``) is the only variable that is not a setting: it says
where the file is. Every other environment variable this module reads is an override of a key:
``MIG_<SECTION>_<KEY>`` (``MIG_TAGGER_MAX_TOKENS=64``), plus the short names of earlier releases
(:data:`ENV_ALIASES`). No other module reads the environment for project settings (a test checks).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mig_assets.core.llm.models import DEFAULT_MODEL_CACHE

DEFAULT_MIG_HOME = "mig_home"
SETTINGS_FILE = "mig.yaml"
DEFAULT_SELECTIONS = Path(__file__).with_name("selections.yaml")
# the names earlier releases read; each overrides one key
ENV_ALIASES = {
    "MIG_TAGGER_PROMPT": "tagger.prompt_version",
    "MIG_SCORER_PROMPT": "scorer.prompt_version",
    "MIG_EMBEDDING_MODEL": "embedder.model",
    "MIG_EMBEDDING_DEVICE": "embedder.device",
    "MIG_EXECUTION": "execution.mode",
    "MIG_RAY_ADDRESS": "execution.address",
    "MIG_RAY_NUM_ACTORS": "execution.num_actors",
    "MIG_RAY_GPUS_PER_ACTOR": "execution.gpus_per_actor",
    "MIG_RAY_BATCH_SIZE": "execution.batch_size",
    "MIG_RAY_STORAGE": "execution.storage",
    "MIG_SELECTIONS": "selections.path",
    "MIG_RESELECT_CRON": "automation.reselect_cron",
    "MIG_MODEL_CACHE": "models.cache_dir",
}


class SettingsError(ValueError):
    """A settings file or override that cannot be used; the message names the file (or variable) and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TargetSettings(_Section):
    path: str = Field(default="", description="target set of target_profile: a file or folder in any pool format ('' = MIG_HOME/targets)")
    filter: str = Field(default="", description="keep target records whose field has one of these values, e.g. 'category=coding,math'")

    def parsed_filter(self) -> tuple[str, list[str]]:
        """``field=a,b`` as (field, [a, b]); ('', []) when unset."""
        if not self.filter:
            return "", []
        name, _, values = self.filter.partition("=")
        return name.strip(), [v.strip() for v in values.split(",") if v.strip()]


class SelectionsSettings(_Section):
    path: str = Field(default="", description="YAML file of selection specs ('' = the specs shipped with the project)")

    def resolved(self, home: Path) -> Path:
        return (home / self.path).resolve() if self.path else DEFAULT_SELECTIONS


class AutomationSettings(_Section):
    reselect_cron: str = Field(default="0 3 * * *", description="when global assets re-select (only if some shard changed)")


class NearDuplicateSettings(_Section):
    methods: str = Field(default="minhash,embedding", description="comma-separated: minhash (lexical), embedding (semantic); '' for none")
    num_perm: int = Field(default=128, ge=16, le=1024, description="MinHash permutations (signature length)")
    minhash_threshold: float = Field(
        default=0.8, gt=0, le=1, description="estimated Jaccard of the word shingles at or above which two samples are near copies"
    )
    shingle_size: int = Field(default=3, ge=1, le=16, description="words per shingle")
    false_negative_weight: float = Field(default=0.95, gt=0, lt=1, description="LSH band choice: weight of missed pairs against false candidates (datasketch)")
    include_response: bool = Field(default=False, description="MinHash over the assistant turns too (default: the user turns, as the embeddings)")
    seed: int = Field(default=42, description="MinHash seed and the semantic index's training sample seed")
    embedding_threshold: float = Field(default=0.95, gt=0, le=1, description="cosine of the sample embeddings at or above which two samples are near copies")
    exact_search_below: int = Field(default=50_000, ge=0, description="pools up to this size are searched exactly (faiss flat), larger ones with an IVF index")
    nprobe: int = Field(default=8, ge=1, description="IVF cells searched per query (larger pools only)")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: str) -> str:
        unknown = [m for m in parse_methods(value) if m not in NEAR_DUPLICATE_METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; expected {', '.join(NEAR_DUPLICATE_METHODS)}")
        return value


NEAR_DUPLICATE_METHODS = ("minhash", "embedding")


def parse_methods(value: str) -> list[str]:
    """``'minhash, embedding'`` as ``['minhash', 'embedding']``."""
    return [m.strip() for m in value.split(",") if m.strip()]


class ModelSettings(_Section):
    cache_dir: str = Field(default=DEFAULT_MODEL_CACHE, description="where packaged models are converted once (SmolLM2's GGUF)")


class DecontaminationSettings(_Section):
    benchmarks: list[str] = Field(default_factory=list, description="benchmark files the contamination asset checks the pool against (any pool format)")
    methods: list[str] = Field(default_factory=lambda: ["ngram", "exact"], description="ngram, exact and/or embedding (needs sample_embeddings)")
    ngram: int = Field(default=8, ge=1, description="word n-gram size (Tulu 3: 8)")
    threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="flag when more than this share of a benchmark item's words are in shared n-grams (Tulu 3: 0.5)"
    )
    embedding_threshold: float = Field(default=0.85, ge=-1.0, le=1.0, description="embedding method: flag at cosine >= this")

    @field_validator("benchmarks", "methods", mode="before")
    @classmethod
    def _comma_list(cls, value):
        """An environment override is one string: ``a.jsonl,b.jsonl``."""
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: list[str]) -> list[str]:
        from mig_assets.core.curation.decontamination import METHODS

        unknown = [m for m in value if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; expected some of {', '.join(METHODS)}")
        return value

    def resolved_benchmarks(self, home: Path) -> list[str]:
        """The benchmark files as absolute paths (relative ones are under MIG_HOME)."""
        return [str((home / path).resolve()) for path in self.benchmarks]


def _resource_sections() -> dict[str, type]:
    from mig_assets.resources import Embedder, Execution, Scorer, Tagger

    return {"tagger": Tagger, "scorer": Scorer, "embedder": Embedder, "execution": Execution}


PLAIN_SECTIONS: dict[str, type[_Section]] = {
    "target": TargetSettings,
    "selections": SelectionsSettings,
    "automation": AutomationSettings,
    "near_duplicates": NearDuplicateSettings,
    "models": ModelSettings,
    "decontamination": DecontaminationSettings,
}
SECTION_HELP = {
    "tagger": "atomic_tags: backend imported | vllm | openai; changing it re-versions the tags (see README)",
    "scorer": "quality_scores: backend imported | logprob | judge",
    "embedder": "tag and sample embeddings (sentence-transformers)",
    "execution": "where model work runs: local | ray",
    "target": "target_profile's target set (TAGS alignment)",
    "selections": "the selection specs: each becomes an asset",
    "automation": "declarative automation",
    "near_duplicates": "near_duplicates: lexical (MinHash LSH) and semantic (embedding cosine) near copies, one representative kept",
    "models": "model files",
    "decontamination": "the contamination asset: benchmark files and matching (mig-assets decontaminate writes them)",
}


def mig_home() -> Path:
    """``$MIG_HOME``, else ``./mig_home``: where the settings file, the pool and the warehouse live."""
    return Path(os.environ.get("MIG_HOME") or DEFAULT_MIG_HOME).expanduser().resolve()


@dataclass
class Settings:
    """Effective settings of one ``MIG_HOME``, with the origin of every value."""

    home: Path
    file: Path
    values: dict[str, dict[str, Any]]
    origins: dict[str, str] = field(default_factory=dict)  # "section.key" -> "file" | "env:VAR" | "default"

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.values[name])

    @property
    def target(self) -> TargetSettings:
        return TargetSettings(**self.values["target"])

    @property
    def selections_path(self) -> Path:
        return SelectionsSettings(**self.values["selections"]).resolved(self.home)

    @property
    def reselect_cron(self) -> str:
        return self.values["automation"]["reselect_cron"]

    @property
    def near_duplicates(self) -> NearDuplicateSettings:
        return NearDuplicateSettings(**self.values["near_duplicates"])

    @property
    def decontamination(self) -> DecontaminationSettings:
        return DecontaminationSettings(**self.values["decontamination"])

    @property
    def model_cache(self) -> str:
        return self.values["models"]["cache_dir"]

    def record(self) -> dict[str, Any]:
        """What a materialization or manifest records: every value (API keys are only ever named by
        variable, ``api_key_env``, never stored) and the file they came from."""
        return {"file": str(self.file), "values": self.values, "overridden_by_env": sorted(k for k, o in self.origins.items() if o.startswith("env:"))}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.values, sort_keys=True, default=str).encode()).hexdigest()[:12]


# resource fields that are not settings of their own section (the model cache is ``models.cache_dir``)
SHARED_FIELDS = ("model_cache",)


def _section_fields(cls: type) -> dict[str, Any]:
    """A section's keys and their pydantic field info: the class's own fields first, then inherited ones."""
    own = [k for k in vars(cls).get("__annotations__", {}) if k in cls.model_fields]
    ordered = own + [k for k in cls.model_fields if k not in own]
    return {k: cls.model_fields[k] for k in ordered if k not in SHARED_FIELDS}


def _all_sections() -> dict[str, type]:
    return {**_resource_sections(), **PLAIN_SECTIONS}


def _defaults() -> dict[str, dict[str, Any]]:
    return {name: {key: info.get_default(call_default_factory=True) for key, info in _section_fields(cls).items()} for name, cls in _all_sections().items()}


def _env_overrides(known: dict[str, dict[str, Any]], environ: dict[str, str]) -> dict[str, str]:
    """``section.key`` -> variable name, for every override variable set in ``environ``."""
    overrides: dict[str, str] = {}
    for variable, key in ENV_ALIASES.items():
        if environ.get(variable):
            overrides[key] = variable
    for section, keys in known.items():
        for key in keys:
            variable = f"MIG_{section}_{key}".upper()
            if environ.get(variable):
                overrides[f"{section}.{key}"] = variable
    return overrides


def _read_file(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise SettingsError(f"{path}: expected a mapping of sections ({', '.join(SECTION_HELP)})")
    return document


def _choices() -> dict[str, tuple[str, ...]]:
    """Keys whose value must be one of a few names."""
    from mig_assets.core.tagging.prompts import PROMPTS
    from mig_assets.resources.execution import MODES
    from mig_assets.resources.scorer import ENGINES, SCORER_BACKENDS
    from mig_assets.resources.tagger import BACKENDS

    return {
        "tagger.backend": BACKENDS,
        "tagger.prompt_version": tuple(PROMPTS),
        "scorer.backend": SCORER_BACKENDS,
        "scorer.engine": ENGINES,
        "execution.mode": MODES,
        "embedder.device": ("auto", "cpu", "cuda", "mps"),
    }


def _validate(name: str, values: dict[str, Any], where: dict[str, str]) -> dict[str, Any]:
    """Values of one section, validated (and coerced) by its model; errors name the origin and key."""
    cls = _all_sections()[name]
    fields = _section_fields(cls)
    for key in values:
        if key not in fields:
            raise SettingsError(f"{where.get(key, 'settings')}: {name}.{key}: unknown key; allowed keys: {', '.join(fields)}")
    try:
        model = cls(**values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(p) for p in error["loc"]) or "?"
            problems.append(f"{where.get(key, 'default')}: {name}.{key}: {error['msg']} (got {error.get('input')!r})")
        raise SettingsError("\n".join(problems)) from None
    checked = {key: getattr(model, key) for key in fields}
    for dotted, allowed in _choices().items():
        section, key = dotted.split(".")
        if section == name and checked[key] not in allowed and not (dotted == "embedder.device" and checked[key].startswith("cuda:")):
            raise SettingsError(f"{where.get(key, 'default')}: {dotted}: {checked[key]!r} is not allowed; expected one of {', '.join(allowed)}")
    return checked


def load_settings(home: str | Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """The effective settings of ``home`` (default :func:`mig_home`): file, then environment, then defaults."""
    home = Path(home).expanduser().resolve() if home is not None else mig_home()
    environ = dict(os.environ) if environ is None else environ
    path = home / SETTINGS_FILE
    document = _read_file(path)
    values = _defaults()
    origins = {f"{s}.{k}": "default" for s, keys in values.items() for k in keys}
    where: dict[str, dict[str, str]] = {s: {} for s in values}
    for section, entries in document.items():
        if section not in values:
            raise SettingsError(f"{path}: unknown section {section!r}; allowed: {', '.join(values)}")
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise SettingsError(f"{path}: {section}: expected a mapping of keys, got {entries!r}")
        for key, value in entries.items():
            values[section][key] = value
            origins[f"{section}.{key}"] = "file"
            where[section][key] = str(path)
    for dotted, variable in _env_overrides(values, environ).items():
        section, key = dotted.split(".", 1)
        values[section][key] = environ[variable]
        origins[dotted] = f"env:{variable}"
        where[section][key] = f"environment variable {variable}"
    checked = {section: _validate(section, entries, where[section]) for section, entries in values.items()}
    return Settings(home=home, file=path, values=checked, origins=origins)


@functools.lru_cache(maxsize=1)
def current_settings() -> Settings:
    """This process's settings, read once: what the definitions (code versions, automation, resources) are built from."""
    return load_settings()


def unknown_variables(environ: dict[str, str] | None = None) -> list[str]:
    """``MIG_*`` variables that override nothing (likely typos)."""
    environ = dict(os.environ) if environ is None else environ
    known = set(ENV_ALIASES) | {"MIG_HOME"}
    known |= {f"MIG_{s}_{k}".upper() for s, keys in _defaults().items() for k in keys}
    return sorted(v for v in environ if v.startswith("MIG_") and v not in known)


def render_settings_file(explicit: dict[str, dict[str, Any]] | None = None) -> str:
    """A commented ``mig.yaml``: every section and key with its description; the keys in ``explicit``
    are set, every other one is shown commented out at its default."""
    explicit = explicit or {}
    defaults = _defaults()
    lines = [
        "# mig-assets project settings, read the same way by the CLI, `dagster dev`, `dg` and the automation.",
        "# Uncomment a key to set it. An environment variable MIG_<SECTION>_<KEY> (e.g. MIG_TAGGER_BACKEND)",
        "# overrides one key for one process; `mig-assets config` prints the effective values and their origin.",
        "",
    ]
    for name, cls in _all_sections().items():
        lines.append(f"{name}:  # {SECTION_HELP[name]}")
        for key, info in _section_fields(cls).items():
            comment = f"  # {info.description}" if info.description else ""
            if key in (explicit.get(name) or {}):
                lines.append(f"  {key}: {json.dumps(explicit[name][key])}{comment}")
            else:
                lines.append(f"  # {key}: {json.dumps(defaults[name][key], default=str)}{comment}")
        lines.append("")
    return "\n".join(lines)


def write_settings_file(home: str | Path, updates: dict[str, Any] | None = None) -> Path:
    """Write ``home``'s settings file: the keys it sets now plus ``updates`` (``{"tagger.backend": "vllm"}``),
    validated first, every other key commented out at its default."""
    path = Path(home) / SETTINGS_FILE
    document = _read_file(path)
    explicit = {section: dict(entries or {}) for section, entries in document.items()}
    for dotted, value in (updates or {}).items():
        section, key = dotted.split(".", 1)
        explicit.setdefault(section, {})[key] = value
    _check_document(path, explicit)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.part")
    staging.write_text(render_settings_file(explicit), encoding="utf-8")
    os.replace(staging, path)
    return path


def _check_document(path: Path, explicit: dict[str, dict[str, Any]]) -> None:
    defaults = _defaults()
    for section, entries in explicit.items():
        if section not in defaults:
            raise SettingsError(f"{path}: unknown section {section!r}; allowed: {', '.join(defaults)}")
        _validate(section, defaults[section] | entries, {k: str(path) for k in entries})
