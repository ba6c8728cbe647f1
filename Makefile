# The project's commands. `make demo` and `make test` are all a fresh machine needs.
PY ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo up test unit lint typecheck bench clean

$(STAMP): pyproject.toml
	@test -n "$(PY)" || { echo "Polder needs Python 3.11 or newer on PATH"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

## The whole system and a simulated city using it (reports in .polder/reports). Ctrl-C stops all.
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/polder up --demo $(DEMO_ARGS)

## Start the whole system (embedded Postgres and broker, every service). Ctrl-C stops it.
up: $(STAMP)
	$(BIN)/polder up

## The whole test suite: lint, types, unit, integration and end-to-end.
# Two workers: a serial run keeps the box under half busy (its tests mostly wait on the broker,
# Postgres and child processes), and each worker starts its own embedded broker and Postgres.
# worksteal, not load: load hands each worker a first chunk in collection order, so one worker
# got the end-to-end and integration tests and the other only the unit tests.
TEST_WORKERS ?= 2
test: lint typecheck
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal

unit: $(STAMP)
	$(BIN)/pytest tests/unit

lint: $(STAMP)
	$(BIN)/ruff check services tests loadtests deploy
	$(BIN)/ruff format --check services tests

# mypy cannot follow setuptools' editable import hook, so it reads the tree through a link.
typecheck: $(STAMP)
	@mkdir -p $(VENV)/mypy_path && ln -sfn ../../services $(VENV)/mypy_path/polder
	MYPYPATH=$(VENV)/mypy_path $(BIN)/mypy

## Every benchmark in bounded time; the table lands in loadtests/results/bench.md.
bench: $(STAMP)
	$(BIN)/python -m loadtests.bench

clean:
	rm -rf $(VENV) .polder .pytest_cache .mypy_cache .ruff_cache
