# Every task of the project; `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PY ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
export PATH := $(abspath $(dir $(PY))):$(PATH)
PROTOS := $(shell find proto -name '*.proto')

.PHONY: help dev deps install test test-fast lint proto proto-check bench clean

help:  ## list the tasks
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install:  ## create .venv with the project and its dev tools
	test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 \
	  | { grep -v '^WARNING: Location' || true; }
	@.venv/bin/python -c "import gateway, agent, shared, cli" 

dev: install  ## run a gateway with an embedded agent and SQLite store in ./.wardgate
	.venv/bin/wardgate dev

deps:  ## Debian packages the tests and benchmarks drive (PostgreSQL, pgbench, OpenSSH, kubectl); needs root
	@if command -v psql >/dev/null && command -v pgbench >/dev/null && \
	    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "test dependencies present"; \
	else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends postgresql postgresql-client postgresql-contrib; \
	fi
	@if test -x /usr/sbin/sshd && command -v ssh >/dev/null && command -v ssh-keygen >/dev/null; then \
	  echo "benchmark dependencies present (OpenSSH)"; \
	else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends openssh-server openssh-client; \
	fi
	@if test -x /usr/bin/kubectl; then \
	  echo "kubernetes test client present (kubectl)"; \
	else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends kubectl; \
	fi

test: install  ## run the whole test suite (real PostgreSQL, real processes)
	.venv/bin/python -m pytest -q

test-fast: install  ## unit tests only (no end-to-end processes)
	.venv/bin/python -m pytest -q -m 'not e2e'

lint: install  ## ruff, mypy strict, import-linter
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy .
	.venv/bin/lint-imports --no-cache

proto:  ## regenerate shared/pb from proto/
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. \
	  --mypy_out=. --mypy_grpc_out=. $(PROTOS)

proto-check:  ## fail when the committed generated code is stale
	@tmp=$$(mktemp -d) && \
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$$tmp --grpc_python_out=$$tmp \
	  --mypy_out=$$tmp --mypy_grpc_out=$$tmp $(PROTOS) && \
	for f in $$(cd $$tmp && find . -type f); do \
	  cmp -s $$tmp/$$f $$f || { echo "stale generated file: $$f (run make proto)"; exit 1; }; \
	done && echo "generated code is current"

bench: install  ## direct vs ssh -L bastion vs Wardgate (~5 min): table, bench/results.json
	.venv/bin/python -m bench

clean:
	rm -rf .wardgate .pytest_cache .mypy_cache .ruff_cache build *.egg-info
