# podtask — every set-up step lives here, so a fresh machine needs only `make demo` / `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install only when the dependency list changes.
INSTALL_STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PYTEST := $(BIN)/pytest
export GOTOOLCHAIN := local

.PHONY: help install lint test test-unit test-cluster crds crds-check demo bench chaos e2e images \
        cluster-build cluster-up cluster-down cluster-gomod clean

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

$(INSTALL_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "podtask needs Python >= 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m localcluster.tools
	rm -f $(VENV)/.installed-* && touch $@

install: $(INSTALL_STAMP) ## Create .venv with podtask, its extras, kubectl and helm

lint: install ## ruff and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

crds: install ## Regenerate crds/ (and the chart's CRD templates) from the pydantic models
	$(BIN)/python -m podtask.api.crd crds
	$(BIN)/python -m podtask.api.chart_crds crds charts/podtask

crds-check: crds ## Fail when crds/ or the chart's CRDs drifted from the models
	git diff --exit-code -- crds/ charts/podtask/templates/crds/ \
	  || { echo "generated CRDs are out of date: run make crds and commit"; exit 1; }

test-unit: install ## Unit tests only (no cluster, seconds)
	$(PYTEST) tests/unit -q

cluster-build: install ## Build etcd and the Kubernetes control plane (cached by version)
	$(BIN)/python -m localcluster.build

cluster-gomod: ## Regenerate localcluster/k8sbins/go.mod after changing versions.env
	$(PYTHON) localcluster/gen_gomod.py

cluster-up: cluster-build ## Start the local control plane and node (state in .localcluster/)
	$(BIN)/python -m localcluster up

cluster-down: ## Stop the local control plane
	test ! -x $(BIN)/python || $(BIN)/python -m localcluster down

test-cluster: cluster-build ## Cluster-tier tests against the real control plane
	$(PYTEST) tests/cluster -q

# The suite CI runs (.ci/run): lint, generated-file drift, unit and cluster tiers.
test: lint cluster-build ## Everything CI runs
	$(PYTEST) tests/unit tests/cluster -q -m 'not e2e and not chaos and not bench'

demo: cluster-build ## Local cluster, the operator from its Helm chart, example runs shown live
	$(BIN)/python -m localcluster.demo

bench: cluster-build ## Benchmarks (results in docs/benchmarks.md)
	$(PYTEST) tests/bench -q -m bench

chaos: cluster-build ## Chaos suite
	$(PYTEST) tests/chaos -q -m chaos

# Builds the images and kind, creates a kind cluster, installs the chart, runs the examples;
# skipped with the reason where no Docker engine answers.
e2e: install ## kind + Helm end-to-end (needs a Docker engine)
	$(PYTEST) tests/e2e -q -m e2e

IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
images: ## Build the runner and operator images (needs a Docker engine)
	@docker info >/dev/null 2>&1 || { echo "make images needs a Docker engine (docker info failed)"; exit 1; }
	docker build -f runner-image/Dockerfile -t ghcr.io/podtask/runner:$(IMAGE_TAG) .
	docker build -f operator/Dockerfile -t ghcr.io/podtask/operator:$(IMAGE_TAG) .

clean: cluster-down ## Remove the virtualenv and local cluster state
	rm -rf $(VENV) .localcluster .mypy_cache .ruff_cache .pytest_cache
