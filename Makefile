# JetBridge's front door. `make run` and `make test` set themselves up on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= .jetbridge
DEMO_REPO := $(abspath $(DATA)/demo/origin.git)
PYTEST_ARGS ?=

.PHONY: help setup run test lint format bench clean

help:  ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

setup: $(STAMP)  ## Create .venv with JetBridge and its development tools

run: setup  ## Run the demo pipeline here and show it succeed
	$(BIN)/python examples/demo/make_repo.py $(DEMO_REPO)
	$(BIN)/jetbridge --data-dir $(DATA) run examples/demo/pipeline.yml --job build \
		--var repo=$(DEMO_REPO)

test: setup  ## Run the whole test suite (Postgres tests need the server on 127.0.0.1:5432)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup  ## ruff, mypy --strict and the import layers
	$(BIN)/ruff check shared functions tests
	$(BIN)/mypy shared functions
	$(BIN)/lint-imports

format: setup  ## Sort imports and fix what ruff can
	$(BIN)/ruff check --fix shared functions tests

bench: setup  ## Run the benchmarks
	$(BIN)/python -m pytest -m bench -p no:randomly --benchmark-only $(PYTEST_ARGS) benchmarks

clean:  ## Remove local state and the virtualenv
	rm -rf $(DATA) $(VENV) .pytest_cache .mypy_cache .ruff_cache
