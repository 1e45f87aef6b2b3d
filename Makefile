# The commands of a fresh machine: `make demo`, `make test` and `make orchestrate`.
# Each creates its own virtualenv and installs what it needs: .venv-demo holds the
# package alone (the demo), .venv adds the dev and Dagster extras (tests, Dagster).
# For a developer's edit-test loop: `make lint` and `make test-fast`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export MELTANO_SEND_ANONYMOUS_USAGE_STATS := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# The package's bytecode, written before each command that starts many Python processes:
# where PYTHONDONTWRITEBYTECODE is set (as on CI machines), each would compile it again.
COMPILE = -m compileall -q tap_gtmcli

.PHONY: demo orchestrate test test-fast lint install clean

# uv installs (in parallel, with bytecode) what pip took minutes to; pip stays in each
# venv for the one fix below.
UV_VERSION := uv==0.13.9

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(UV_VERSION)
	$(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode -e '.[dev,orchestration]'
	# dagster-webserver's gql pulls in PyPI's `backoff`, which overwrites the files of
	# singer-sdk's fork `python-backoff` (same import name): put the fork's back.
	$(BIN)/pip install --quiet --force-reinstall --no-deps 'python-backoff>=3'
	touch $(STAMP)

install: $(STAMP)

# The demo's own virtualenv: the package alone, none of the dev or Dagster extras.
DEMO_VENV := .venv-demo
DEMO_STAMP := $(DEMO_VENV)/.installed

$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/pip install --quiet $(UV_VERSION)
	$(DEMO_VENV)/bin/uv pip install --quiet --python $(DEMO_VENV)/bin/python --compile-bytecode -e .
	touch $(DEMO_STAMP)

## Runs the whole pipeline on the embedded sandbox and a local DuckDB, then shows it.
demo: $(DEMO_STAMP)
	$(DEMO_VENV)/bin/python $(COMPILE)
	$(DEMO_VENV)/bin/python -m tap_gtmcli.demo

## Dagster's UI (http://127.0.0.1:3000; DAGSTER_PORT=N moves it) and daemon on the
## sandbox, DAGSTER_HOME in output/dagster (README "Scheduling"). Ctrl-C stops it.
orchestrate: $(STAMP)
	$(BIN)/python -m tap_gtmcli.demo.orchestrate

## ruff, then mypy (type-checked for the lowest Python supported: pyproject [tool.mypy]).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

## Lint, type checks, then the whole test suite.
test: lint
	$(BIN)/python $(COMPILE)
	$(BIN)/pytest

## The edit-test loop: no Meltano, no PostgreSQL, none of the tests that cost seconds
## each (markers `e2e` and `slow`, both set by path in tests/conftest.py).
test-fast: $(STAMP)
	$(BIN)/python $(COMPILE)
	$(BIN)/pytest -m "not e2e and not slow" --durations=5

clean:
	rm -rf $(VENV) $(DEMO_VENV) .venv-meltano .meltano output .pytest_cache .mypy_cache .ruff_cache
