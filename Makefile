# northpole: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8080
PYTEST_WORKERS ?= auto
# Debian packages the tests need (promtool checks the Prometheus rules) and the benchmarks need.
TEST_DEBS := prometheus etcd-server etcd-client postgresql redis-server
BENCH_DEBS := wrk

.PHONY: install system-deps run test lint typecheck pytest bench format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(STAMP)

system-deps:
	@bash scripts/ensure-debs.sh $(TEST_DEBS)

run: install
	$(BIN)/northpole up --host $(HOST) --port $(PORT) --demo

test: install lint typecheck pytest

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy

pytest: install system-deps
	$(BIN)/pytest -n $(PYTEST_WORKERS) --cov --cov-report=term

BENCHES := idgen queue queue_redis registry bus matching coord matcher_replicas

# Every benchmark runs even if an earlier one missed a target; the exit status
# says whether all of them met theirs.
bench: install system-deps
	@bash scripts/ensure-debs.sh $(BENCH_DEBS)
	@status=0; for b in $(BENCHES); do $(BIN)/python bench/$$b.py || status=1; done; exit $$status

format: install
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* build dist
