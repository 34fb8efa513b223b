# The two commands of README.md: `make run` (set up + the pipeline on the default profile) and
# `make test` (set up + the test suite; .ci/run calls exactly this).
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# DVC stage commands call `python -m stages...`: the venv's python must come first.
export PATH := $(BIN):$(PATH)

# TORCH=cpu (default): the lock's torch==X+cpu, from PyPI's CPU index if the configured pip
# sources lack it; TORCH=cuda: the same release's CUDA build from PyPI, with its nvidia-* wheels.
# The choice is recorded in $(VENV)/.installed, so a later `make run`/`make test` keeps it, and
# `make setup TORCH=...` with the other value reinstalls torch.
INSTALLED_TORCH := $(if $(wildcard $(VENV)/.installed),$(or $(shell cat $(VENV)/.installed),cpu))
TORCH ?= $(or $(INSTALLED_TORCH),cpu)
ifeq ($(filter $(TORCH),cpu cuda),)
$(error TORCH must be cpu or cuda, not '$(TORCH)')
endif

.PHONY: setup run test test-fast bench clean-venv
ifneq ($(INSTALLED_TORCH),)
ifneq ($(INSTALLED_TORCH),$(TORCH))
.PHONY: $(VENV)/.installed
endif
endif

setup: $(VENV)/.installed

# The whole environment is pinned in requirements.lock and installed without resolution
# (--no-deps): sample-factory's declared bounds contradict nle/metaworld, see the lock's header.
# tools/install_torch.py installs the lock minus torch that way, and torch per TORCH (its docstring).
$(VENV)/.installed: requirements.lock pyproject.toml
	@$(PY) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 is required, found {sys.version.split()[0]} (set PY=...)"'
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python tools/install_torch.py --lock requirements.lock --variant $(TORCH)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import sample_factory, nle, ale_py, metaworld, prefect, dvc, torch, gymnasium; print('environment ok: torch', torch.__version__, '| gymnasium', gymnasium.__version__)"
	echo $(TORCH) > $@

run: setup
	$(BIN)/python -m retainrl.orchestration.dvcgen
	$(BIN)/python -m retainrl.orchestration.run
	$(BIN)/python -m retainrl.pipeline.summary

# Two workers (pytest-xdist): tests/conftest.py says how the suite is split between them.
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python -m benchmarks.bench_apple

clean-venv:
	rm -rf $(VENV)

# Orchestration: make server | deploy | flow | flow-dask | push | retrieve | bench-flows (docs/orchestration.md)
include Makefile.flows
