# The two commands a new user needs: `make run` (whole local stack) and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-serial lint bootstrap bench clean console reconcile fuzz \
	test-unit test-integration test-e2e test-chaos test-browser test-cluster

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
	$(BIN)/python -m billing.stack fetch-keycloak
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m tests.parallel $(PYTEST_ARGS)

# The same tests in one pytest process (slower: the tiers mostly wait, tests/parallel.py).
test-serial: bootstrap
	$(BIN)/python -m billing.stack fetch-kafka
	$(BIN)/python -m billing.stack fetch-keycloak
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# One tier at a time for daily work (`make test` runs them all, as CI does).
test-unit: bootstrap
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# The tiers that run against the local stack need the Kafka distribution first.
STACK_TIERS := integration e2e chaos browser cluster

$(addprefix test-,$(STACK_TIERS)): test-%: bootstrap
	$(BIN)/python -m billing.stack fetch-kafka
	$(BIN)/python -m billing.stack fetch-keycloak
	$(BIN)/python -m pytest tests/$* $(PYTEST_ARGS)

# schemathesis against the live API, as user and admin (BILLING_FUZZ_SECONDS per token, 60).
fuzz: bootstrap
	$(BIN)/python -m pytest tests/integration/test_api_fuzz.py $(PYTEST_ARGS)

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/mypy

console: bootstrap
	$(BIN)/python -m dashboard

bench: bootstrap
	$(BIN)/python -m bench.run_all

clean:
	rm -rf .state
