# The two commands a newcomer runs: `make demo` (a whole mission on the embedded AWS) and
# `make test`. Each creates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test unit functional e2e chaos bench lint format clean

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/lighthpc demo

test: setup lint
	$(BIN)/python -m pytest -q --durations=5

unit: setup
	$(BIN)/python -m pytest -q tests/unit

functional: setup
	$(BIN)/python -m pytest -q tests/functional

e2e: setup
	$(BIN)/python -m pytest -q tests/e2e

bench: setup
	$(BIN)/python -m bench.bench

chaos: setup
	$(BIN)/lighthpc chaos --json bench/results/chaos.json

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
