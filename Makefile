# make all = lint + types + tests. `bash .ci/run` does the same on a fresh machine, installing
# what is missing first.
PY ?= .venv/bin/python

.PHONY: all install lint types test cycle clean bench screenshot images k8s-agents

all: lint types test

install:
	python3 -m venv .venv
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'

lint:
	$(PY) -m ruff check runner tests bench
	$(PY) -m ruff format --check runner tests bench

types:
	$(PY) -m mypy

test:
	$(PY) -m pytest

cycle:
	.venv/bin/runner cycle && .venv/bin/runner status

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache mutants

bench:
	$(PY) -m bench

# The browser test, writing its final screenshot to docs/dashboard.png (the README's).
screenshot:
	DASHBOARD_SCREENSHOT=1 $(PY) -m pytest tests/integration/test_dashboard.py

# Both images (the runner's and the OpenCode server's) with buildah on debootstrap stand-ins for
# the registry's bases, as CI builds them (root; docs/IMAGES.md). The tests in tests/images run them.
images:
	bash .ci/images build

# After adding, renaming or removing an agent in examples/opencode/agent/: list them all in the
# ConfigMap generator of k8s/opencode (examples/opencode/kustomization.yaml).
k8s-agents:
	bash k8s/opencode/sync-agents

# Reliability suite with the full 200-cycle soak; writes docs/RELIABILITY.md from the measured figures.
.PHONY: reliability
reliability:
	RELIABILITY_REPORT=docs/RELIABILITY.md RELIABILITY_SOAK_CYCLES=200 .venv/bin/python -m pytest tests/reliability

# Mutation score of the pure core with the unit tests (3,700 mutants: long, so not part of
# `make all` or .ci/run); writes the "Mutation score" section of docs/TESTING.md.
# MUTATION_JOBS=2 takes both cores; MUTATION_ARGS=--resume goes on with a run that was stopped.
MUTATION_JOBS ?= 1
MUTATION_ARGS ?=
.PHONY: mutation
mutation:
	MUTATION_JOBS=$(MUTATION_JOBS) $(PY) -m tests.mutation $(MUTATION_ARGS)
