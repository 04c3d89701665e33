# The one entry point for people: `make run` serves on embedded defaults, `make test` tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
DEV_TOKENS ?= true

.PHONY: install install-browser run test test-s3 bench stress lint format migrate clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is required"; exit 1; }
	$(BIN)/python -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

migrate: install
	$(BIN)/avatar-service migrate

# A local developer's server: the try-it page and POST /dev/token are on (loopback only, with the
# generated secret). `make run DEV_TOKENS=false` serves without them (e.g. with a secret in .env).
run: migrate
	AVATAR_DEV_TOKENS=$(DEV_TOKENS) $(BIN)/avatar-service serve --host $(HOST) --port $(PORT)

test: install install-browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The browser tests use Debian's Chromium (Playwright never downloads one). Installed with
# apt-get when missing and this runs as root; otherwise those tests skip (and fail under CI=true).
install-browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
		else \
			echo "chromium is not installed: the browser tests will skip (apt-get install chromium)"; \
		fi; }

# The whole suite with S3 storage: a moto S3 server on loopback, spoken to over HTTP.
test-s3: install
	AVATAR_TEST_STORAGE=s3 $(BIN)/python -m pytest $(PYTEST_ARGS)

# Benchmarks need pyvips (the bench extra) for the reference pipeline.
bench: install
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,bench]'
	$(BIN)/python -m benchmarks.pipeline --wins
	$(BIN)/python -m benchmarks.load
	$(BIN)/python -m benchmarks.pool

# 100 clients upload a 10 MB photo at once to a server started for it (SECURITY.md); exits
# non-zero when a rule breaks. CI runs a reduced version (tests/security/test_stress.py).
stress: install
	$(BIN)/python -m benchmarks.stress $(STRESS_ARGS)

lint: install
	$(BIN)/ruff check app tests alembic benchmarks
	$(BIN)/ruff format --check app tests alembic benchmarks

format: install
	$(BIN)/ruff format app tests alembic benchmarks
	$(BIN)/ruff check --fix app tests alembic benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
