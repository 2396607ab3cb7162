# leadloop: `make run` starts everything locally, `make test` checks everything.

VENV := .venv
BIN := $(VENV)/bin
# Re-install only when the project's dependencies change.
STAMP := $(VENV)/.installed

# The first Python 3.11+ on PATH; override with `make PYTHON=/path/to/python3.12`.
PYTHON ?= $(shell for candidate in python3.13 python3.12 python3.11 python3; do \
	command -v $$candidate >/dev/null 2>&1 && \
	$$candidate -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && \
	{ echo $$candidate; break; }; done)

.PHONY: run test fmt lint bench install redis chromium demo audit chaos

run: install
	@scripts/ensure-redis || echo "Going on: leadloop run checks LEADLOOP_REDIS_URL itself."
	$(BIN)/leadloop run

test: install redis chromium
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

# Known vulnerabilities in the installed dependencies: pip-audit on PyPI's (or
# OSV's) live service, or, when it cannot be reached or with AUDIT_OFFLINE=1, the
# committed snapshot of the PyPA advisory database (deploy/audit/; it says its age).
audit: install
	scripts/audit

# Load and faults (docs/benchmarks.md): its own Redis (needs redis-server), sandbox, API
# and two workers; exits 1 if a lead is lost or duplicated. Short run:
# make chaos CHAOS="--rate 20 --seconds 10"
chaos: install
	$(BIN)/python -m bench.chaos $(CHAOS)

bench: install redis
	$(BIN)/python -m bench.run

install: $(STAMP)

redis:
	@scripts/ensure-redis

# The dashboard's browser test drives the system's Chromium (never a downloaded one).
chromium:
	@scripts/ensure-chromium

# What `make run` shows, without waiting: exits 0 with a summary when it all worked.
demo: install redis
	$(BIN)/leadloop run --once

$(BIN)/python:
	@if [ -z "$(PYTHON)" ]; then \
		echo "leadloop needs Python 3.11 or newer on PATH (or make PYTHON=...)." >&2; \
		exit 1; fi
	$(PYTHON) -m venv $(VENV)
	# A new venv brings the pip and setuptools of its Python, which can carry known
	# vulnerabilities (make audit): the fixed releases first.
	$(BIN)/python -m pip install --quiet --upgrade 'pip>=23.3' 'setuptools>=65.5.1'

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@
