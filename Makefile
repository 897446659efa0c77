# The two commands a fresh machine needs (each installs what it needs into .venv first):
#   make demo   - run a small real experiment on the embedded default store and show the results
#   make test   - lint, type-check and run the whole test suite
#   make bench  - the benchmark suite against MLflow (benchmarks/RESULTS.md); make bench-quick to smoke-test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.labvault-installed

.PHONY: demo test lint typecheck pytest bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/labvault demo

lint: $(STAMP)
	$(BIN)/ruff check labvault tests benchmarks
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy labvault

pytest: $(STAMP)
	$(BIN)/python -m pytest

test: lint typecheck pytest

# Benchmarks side by side with MLflow (installs MLflow into .bench/mlflow-venv on first use).
bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache labvault-data
