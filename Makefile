# oubli developer entry points. Every target is safe to run again and on a fresh machine.
#
#   make install      .venv (Python 3.11) + requirements-dev.lock (hash-checked) + -e ., when either changed
#   make lock         re-resolve requirements.lock and requirements-dev.lock (UPGRADE=1: newest allowed)
#   make lint         ruff check + mypy (strict, packages worker and connectors) + lint-imports (.importlinter)
#   make test         install, local stack up, lint, pytest (extra pytest arguments: PYTEST_ARGS=...)
#   make test-fast    tests/unit only: no stack, no lint, under a minute (tests/integration, tests/e2e need it)
#   make test-py313   the fast tests on Python 3.13, in .cache/venv-3.13 from the same lock
#   make demo         install, Kafka + S3 up, scripts/demo.py
#   make stack-up     Kafka 127.0.0.1:9092, PostgreSQL 127.0.0.1:5432, S3 (moto) http://127.0.0.1:5000
#   make stack-down   stop them
#   make stack-status one line per part
#
# The stack is left running after `make test` so the next run starts at once; .ci/run stops it.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

export PIP_CACHE_DIR ?= $(CURDIR)/.cache/pip

.PHONY: help install lock lint test test-fast test-py313 demo stack-up stack-down stack-status

help:
	@sed -n '3,14p' $(firstword $(MAKEFILE_LIST)) | sed 's/^# \{0,1\}//'

install:
	@scripts/install

# Both locks are universal (markers for Python 3.11 to 3.13, any platform) and hashed; the image's lock
# is resolved under the dev one, so the two agree on every shared pin. Without UPGRADE=1, existing
# pins are kept and only what pyproject.toml now requires changes. Only uv is needed first (not a
# complete install, which may be what the old lock no longer allows); the new lock is installed after.
lock:
	@[[ -x $(VENV)/bin/uv ]] || scripts/install
	UV_CACHE_DIR=$(CURDIR)/.cache/uv $(VENV)/bin/uv pip compile -q pyproject.toml --extra dev $(LOCK_FLAGS) -o requirements-dev.lock
	UV_CACHE_DIR=$(CURDIR)/.cache/uv $(VENV)/bin/uv pip compile -q pyproject.toml -c requirements-dev.lock $(LOCK_FLAGS) -o requirements.lock
	@scripts/install

LOCK_FLAGS = --universal --python-version 3.11 --generate-hashes --custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

# OUBLI_TOOLS_BUILDING: .ci/run builds helm and promtool beside the suite; the chart tests wait for it.
test: install
	scripts/stack up
	[[ -n "$${OUBLI_TOOLS_BUILDING:-}" ]] || scripts/helm-check --install-only
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The unit tier needs no broker, store server or S3 (tests/conftest.py marks the tiers by folder),
# but the chart's tests need helm and promtool (built once into .cache/bin).
test-fast: install
	scripts/helm-check --install-only
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

test-py313:
	scripts/helm-check --install-only
	scripts/py-newest

demo: install
	scripts/stack up kafka s3
	$(PY) scripts/demo.py

stack-up: install
	scripts/stack up

stack-down:
	scripts/stack down

stack-status:
	scripts/stack status
