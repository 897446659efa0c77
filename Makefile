# The two commands a fresh machine needs (each installs what it needs into .venv first):
#   make demo   - run a small real experiment on the embedded default store and show the results
#                 (installs labvault and its runtime dependencies only)
#   make test   - lint (ruff, import-linter), type-check, build the docs and run the whole test suite
#                 (installs labvault[dev])
#   make docs   - build the documentation site (docs/, mkdocs.yml) into site/; --strict: any warning fails
#   make bench  - the benchmark suite against MLflow (benchmarks/RESULTS.md); make bench-quick to smoke-test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.labvault-runtime
DEV := $(VENV)/.labvault-dev

.PHONY: demo test lint typecheck docs pytest bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $(RUNTIME)

$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps 'aimm==1.2.dev1'  # see the aimm extra in pyproject.toml
	touch $(RUNTIME) $(DEV)

demo: $(RUNTIME)
	$(BIN)/labvault demo

lint: $(DEV)
	$(BIN)/ruff check labvault tests benchmarks docs
	$(BIN)/lint-imports

typecheck: $(DEV)
	$(BIN)/mypy labvault

# A broken link or anchor, a page missing from the nav or a docstring mkdocstrings cannot parse is a warning,
# and --strict makes it an error (not with --quiet, which keeps the warnings out of the count).
# NO_MKDOCS_2_WARNING silences Material's banner about its end of life (May 2027; Zensical is its
# successor), printed on every build.
docs: $(DEV)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

pytest: $(DEV)
	$(BIN)/python -m pytest

test: lint typecheck docs pytest

# Benchmarks side by side with MLflow (installs MLflow into .bench/mlflow-venv on first use).
bench: $(DEV)
	$(BIN)/python -m benchmarks

bench-quick: $(DEV)
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache labvault-data site
