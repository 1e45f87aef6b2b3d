# The two commands of a fresh machine: `make demo` and `make test`.
# Each creates its own virtualenv (.venv) and installs what it needs.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export MELTANO_SEND_ANONYMOUS_USAGE_STATS := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,orchestration]'
	touch $(STAMP)

install: $(STAMP)

## Runs the whole pipeline on the embedded sandbox and a local DuckDB, then shows it.
demo: $(STAMP)
	$(BIN)/python -m tap_gtmcli.demo

## Lint, type checks, then the whole test suite.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .venv-meltano .meltano output .pytest_cache .mypy_cache .ruff_cache
