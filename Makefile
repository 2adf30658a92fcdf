# Every task of the project; `make help` lists them.
PY ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
export PATH := $(abspath $(dir $(PY))):$(PATH)
PROTOS := $(shell find proto -name '*.proto')

.PHONY: help dev install test test-fast lint proto proto-check bench clean

help:  ## list the tasks
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install:  ## create .venv with the project and its dev tools
	test -d .venv || python3 -m venv .venv
	.venv/bin/pip install -q -e '.[dev]'

dev: install  ## run a gateway with an embedded agent and SQLite store in ./.wardgate
	.venv/bin/wardgate dev

test:  ## run the whole test suite (real PostgreSQL, real processes)
	$(PY) -m pytest -q

test-fast:  ## unit tests only (no end-to-end processes)
	$(PY) -m pytest -q -m 'not e2e'

lint:  ## ruff, mypy strict, import-linter
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy .
	$(PY) -m importlinter.cli lint --no-cache 2>/dev/null || .venv/bin/lint-imports --no-cache

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

bench:  ## direct vs ssh -L bastion vs Wardgate, printed as ratios
	$(PY) -m bench

clean:
	rm -rf .wardgate .pytest_cache .mypy_cache .ruff_cache build *.egg-info
