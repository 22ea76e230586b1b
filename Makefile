# TensorFleet developer commands. `make help` lists them.
#
#   make demo    set everything up on a fresh clone and run the federated-training demo
#   make check   the test command (CI runs it too): ruff, ruff format --check, mypy, pytest

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned to the CPU build and installed before the package, so that
# `pip install -e .` finds it satisfied and never pulls a CUDA build.
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.tensorfleet-installed

.PHONY: help setup check lint typecheck test demo fleet-demo bench format clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml changes (or the venv is new).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install '$(TORCH)'
	$(BIN)/python -m pip install --config-settings editable_mode=compat -e '.[test]'
	touch $@

setup: $(STAMP) ## create .venv, install torch 2.13.0 (CPU), then the package with test extras

check: setup ## ruff, ruff format --check, mypy, pytest (the CI command)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy tests/typing
	$(BIN)/pytest

lint: setup ## ruff check and ruff format --check only
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup ## mypy only (the packages, then the typing checks of the public API)
	$(BIN)/mypy
	$(BIN)/mypy tests/typing

test: setup ## pytest only (needs RabbitMQ and Redis for the fleet tests)
	$(BIN)/pytest

demo: setup ## the main job: federated training demo on in-process workers
	$(BIN)/tensorfleet demo

fleet-demo: setup ## the demo on a running fleet (tensorfleet up bob alice jon secure_worker)
	$(BIN)/tensorfleet demo --fleet

bench: setup ## benchmarks, each figure beside its baseline
	$(BIN)/tensorfleet bench

format: setup ## rewrite the code with ruff format
	$(BIN)/ruff format .

clean: ## remove caches (keeps .venv)
	rm -rf .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist *.egg-info
