# The one entry point for people: `make run` serves on embedded defaults, `make test` tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint format migrate clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is required"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

migrate: install
	$(BIN)/avatar-service migrate

run: migrate
	$(BIN)/avatar-service serve --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check app tests alembic benchmarks
	$(BIN)/ruff format --check app tests alembic benchmarks

format: install
	$(BIN)/ruff format app tests alembic benchmarks
	$(BIN)/ruff check --fix app tests alembic benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
