# make all = lint + types + tests. `bash .ci/run` does the same on a fresh machine, installing
# what is missing first.
PY ?= .venv/bin/python

.PHONY: all install lint types test cycle clean bench images k8s-agents

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
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache

bench:
	$(PY) -m bench

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
