# Partita — every command a developer or CI needs. `make install` sets up everything from scratch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BUF := node_modules/.bin/buf
PROTOS := $(wildcard protos/partita/v1/*.proto)
LISTEN ?= 127.0.0.1:50051
DATABASE ?= sqlite:///partita.db

.PHONY: install generate docs run test lint bench clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	npm install --no-audit --no-fund --silent

generate:
	rm -rf generated/partita
	mkdir -p generated
	$(BIN)/python -m tools.generate_protos generated

docs:
	$(BIN)/python -m tools.api_reference docs/api-reference.md

run:
	$(BIN)/python -m server --listen $(LISTEN) --database $(DATABASE)

# Two processes, a test file each at a time (server subprocesses leave the cores idle while they
# wait); the PostgreSQL restart test runs alone afterwards, since it stops the cluster under
# every other test's feet.
test:
	$(BIN)/pytest -q -n 2 --dist loadfile -m "not pg_restart"
	$(BIN)/pytest -q -m pg_restart

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy server storage tests tools bench cli
	cd protos && ../$(BUF) lint
	cd protos && ../$(BUF) breaking --against baseline-v1.0.0.binpb
	$(BIN)/python -m tools.api_reference --check

bench:
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) node_modules build *.egg-info
