# The two commands of README.md: `make run` (set up + the pipeline on the default profile) and
# `make test` (set up + the test suite; .ci/run calls exactly this).
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# DVC stage commands call `python -m stages...`: the venv's python must come first.
export PATH := $(BIN):$(PATH)

.PHONY: setup run test test-fast bench clean-venv

setup: $(VENV)/.installed

# The whole environment is pinned in requirements.lock and installed without resolution
# (--no-deps): sample-factory's declared bounds contradict nle/metaworld, see the lock's header.
$(VENV)/.installed: requirements.lock pyproject.toml
	@$(PY) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 is required, found {sys.version.split()[0]} (set PY=...)"'
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import sample_factory, nle, ale_py, metaworld, prefect, dvc, torch, gymnasium; print('environment ok: torch', torch.__version__, '| gymnasium', gymnasium.__version__)"
	touch $@

run: setup
	$(BIN)/dvc repro
	@echo "Results: reports/*/report/report.md  |  dvc metrics show  |  dvc plots show"

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python -m benchmarks.bench_apple

clean-venv:
	rm -rf $(VENV)

# Orchestration: make server | deploy | flow | flow-dask | push | retrieve | bench-flows (docs/orchestration.md)
include Makefile.flows
