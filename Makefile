# Every task of the project; `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PY ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
export PATH := $(abspath $(dir $(PY))):$(PATH)
PROTOS := $(shell find proto -name '*.proto')

.PHONY: help dev deps install lock test test-latest test-fast suite-psycopg lint proto proto-check bench bench-audit bench-workers bench-forward bench-column-masking docs clean

help:  ## list the tasks
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

install: .venv/.installed  ## create .venv with the project and its dev tools, from the lock

# The lock (requirements*.txt, exact versions and hashes) is what gets installed; pyproject.toml keeps
# the ranges a library user needs. The machine's pip configuration is ignored so that every machine
# resolves against the same index.
LOCKENV := PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/.installed: requirements-build.txt requirements-dev.txt pyproject.toml
	test -x .venv/bin/python || python3 -m venv .venv
	@echo "installing $$(cat requirements-build.txt requirements-dev.txt | grep -c '^[a-z]') locked packages into .venv (about two minutes the first time)"
	$(LOCKENV) .venv/bin/python -m pip install --require-hashes \
	  -r requirements-build.txt -r requirements-dev.txt \
	  | awk '/^(Collecting|ERROR)/ { print; fflush() } /^Successfully installed/ { print "installed", NF - 2, "packages" }'
	$(LOCKENV) .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . \
	  >.venv/install.log 2>&1 || { cat .venv/install.log; exit 1; }
	@.venv/bin/python -c "import gateway, agent, shared, cli"
	@touch $@

lock: install  ## refresh requirements*.txt (exact versions, hashes) from pyproject.toml; UPGRADE=1 for newest
	$(LOCKENV) .venv/bin/pip-compile -q $(LOCKFLAGS) --all-build-deps --only-build-deps \
	  -o requirements-build.txt pyproject.toml
	$(LOCKENV) .venv/bin/pip-compile -q $(LOCKFLAGS) -o requirements.txt pyproject.toml
	$(LOCKENV) .venv/bin/pip-compile -q $(LOCKFLAGS) --extra dev --extra docs --extra suites -c requirements.txt \
	  -o requirements-dev.txt pyproject.toml
LOCKFLAGS := --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
  $(if $(UPGRADE),--upgrade)

test-latest:  ## the unit tests against the newest versions pyproject.toml allows (a throwaway venv)
	rm -rf build/latest && python3 -m venv build/latest
	build/latest/bin/python -m pip install -q --upgrade pip
	build/latest/bin/python -m pip install -q --upgrade -e '.[dev]'
	build/latest/bin/python -m pytest -q -m 'not e2e' -p no:cacheprovider

dev: install  ## run a gateway with an embedded agent and SQLite store in ./.wardgate
	.venv/bin/wardgate dev

deps:  ## Debian packages the tests and benchmarks drive (PostgreSQL, pgbench, OpenSSH, kubectl, openssl, chromium, ss); needs root
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
	@if command -v openssl >/dev/null; then \
	  echo "certificate tool present (openssl, for deploy/fleet-secrets.sh)"; \
	else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends openssl; \
	fi
	@if command -v ss >/dev/null; then \
	  echo "socket statistics present (ss)"; \
	else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends iproute2; \
	fi
	@if command -v chromium >/dev/null; then \
	  echo "headless browser present (chromium)"; \
	else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends chromium; \
	fi

# The e2e tests mostly wait on real processes, so they overlap well even on 2 cores. --dist
# loadscope keeps a module on one worker: its module-scoped fixtures (a gateway, a cluster) start
# once. (xdist_group does nothing under pytest 9: xdist 3.8 renames item._nodeid, which pytest 9
# no longer reads.) TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= 3
test: install  ## run the whole test suite (real PostgreSQL, real processes), on TEST_WORKERS workers
	.venv/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope -m 'not serial'
	.venv/bin/python -m pytest -q -m serial

test-fast: install  ## unit tests only (no end-to-end processes)
	.venv/bin/python -m pytest -q -m 'not e2e'

# Peers' test suites, used where they lie (shared/ beside the repo), never copied into it.
SUITES ?= ../shared/suites
suite-psycopg: install  ## psycopg's own tests, direct vs through Wardgate; fails on a new difference
	.venv/bin/python -m tests.suites.psycopg_compare --suite $(SUITES)/psycopg

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

docs: install  ## build the documentation site into build/site (mkdocs --strict: warnings are errors)
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir build/site

bench: install  ## direct vs ssh -L bastion vs Wardgate, 1 vs 2 workers, forwarded sessions, a column rule (~12 min)
	.venv/bin/python -m bench
	.venv/bin/python -m bench.workers
	.venv/bin/python -m bench.forward
	.venv/bin/python -m bench.column_masking

bench-workers: install  ## pgbench through `gateway --workers` 1 and 2 on a PostgreSQL store, with ratios (~3 min)
	.venv/bin/python -m bench.workers

bench-forward: install  ## pgbench through a member its agent cannot reach (forwarded) vs the member with the agent (~2 min)
	.venv/bin/python -m bench.forward

bench-column-masking: install  ## pgbench -S through Wardgate without and with a column masking rule (~2 min)
	.venv/bin/python -m bench.column_masking

bench-audit: install  ## audit appends per second with 1, 2 and 3 gateway members on one PostgreSQL (~1 min)
	.venv/bin/python -m bench.audit

clean:
	rm -rf .wardgate .pytest_cache .mypy_cache .ruff_cache build *.egg-info
