# The two commands a new user needs: `make run` (whole local stack) and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bootstrap bench clean console reconcile

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

bootstrap: $(BIN)/.installed

run: bootstrap
	$(BIN)/python -m billing.stack run

test: bootstrap
	$(BIN)/python -m billing.stack fetch-kafka
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/mypy

console: bootstrap
	$(BIN)/python -m dashboard

bench: bootstrap
	$(BIN)/python -m bench.run_all

clean:
	rm -rf .state
