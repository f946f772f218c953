# The two commands a new user needs: `make run` (whole local stack) and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bootstrap bench clean console reconcile \
	test-unit test-integration test-e2e test-chaos test-browser

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

# One tier at a time for daily work (`make test` runs them all, as CI does).
test-unit: bootstrap
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# The tiers that run against the local stack need the Kafka distribution first.
STACK_TIERS := integration e2e chaos browser

$(addprefix test-,$(STACK_TIERS)): test-%: bootstrap
	$(BIN)/python -m billing.stack fetch-kafka
	$(BIN)/python -m pytest tests/$* $(PYTEST_ARGS)

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/mypy

console: bootstrap
	$(BIN)/python -m dashboard

bench: bootstrap
	$(BIN)/python -m bench.run_all

clean:
	rm -rf .state
