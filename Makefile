# oubli developer entry points. Every target is safe to run again and on a fresh machine.
#
#   make install      .venv (Python 3.11) + pip install -e '.[dev]', only when pyproject.toml changed
#   make lint         ruff check + mypy (strict, packages worker and connectors)
#   make test         install, local stack up, lint, pytest (extra pytest arguments: PYTEST_ARGS=...)
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

.PHONY: help install lint test demo stack-up stack-down stack-status

help:
	@sed -n '3,11p' $(firstword $(MAKEFILE_LIST)) | sed 's/^# \{0,1\}//'

install:
	@scripts/install

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: install
	scripts/stack up
	scripts/helm-check --install-only
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: install
	scripts/stack up kafka s3
	$(PY) scripts/demo.py

stack-up: install
	scripts/stack up

stack-down:
	scripts/stack down

stack-status:
	scripts/stack status
