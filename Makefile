# Two entry points for a fresh machine: `make demo` and `make test` (each installs everything first).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: setup demo test bench dev

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: setup
	$(VENV)/bin/mig-assets demo

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/run_all.py

dev: setup
	DAGSTER_HOME=$${DAGSTER_HOME:-$$PWD/mig_home/dagster} $(VENV)/bin/dagster dev
