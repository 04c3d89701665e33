# The one entry point for people: `make run` serves on embedded defaults, `make test` tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
DEV_TOKENS ?= true
# The installed modules are compiled as they are first imported, and kept: pip compiling all
# of them (most are never imported) took longer than installing them, and where the environment
# sets PYTHONDONTWRITEBYTECODE nothing compiled later would be kept, so every test process
# compiled the whole stack from source.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install install-browser install-haproxy install-exiftool install-nginx install-wrk \
	install-test-packages run test \
	test-fast test-s3 bench stress lint \
	format migrate clean cluster cluster-stop chaos

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is required"; exit 1; }
	$(BIN)/python -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile \
		-c constraints.txt -e '.[test]'
	touch $(STAMP)

migrate: install
	$(BIN)/avatar-service migrate

# A local developer's server: the try-it page and POST /dev/token are on (loopback only, with the
# generated secret). `make run DEV_TOKENS=false` serves without them (e.g. with a secret in .env).
run: migrate
	AVATAR_DEV_TOKENS=$(DEV_TOKENS) $(BIN)/avatar-service serve --host $(HOST) --port $(PORT)

# Tests run in two pytest-xdist workers a core (JOBS=1 for one process), a worker that runs out
# of tests taking some of another's: many tests wait on a server, a child process or a timeout,
# and a second worker a core keeps the cores busy meanwhile (one a core left a quarter of the
# machine idle). `make test` is everything CI needs, in one run: the whole suite, and the tests
# that touch the store on the local store and on S3.
JOBS ?= $(shell python3 -c 'import os; print(2 * len(os.sched_getaffinity(0)))')
PYTEST := $(BIN)/python -m pytest -n $(JOBS) --dist worksteal
# The slow kinds (markers in pyproject.toml) that the fast tier leaves out.
SLOW := browser or corpus or server or postgres or long
# What runs on the suite's store (AVATAR_TEST_STORAGE): the API and the services. The storage
# contract covers every adapter, S3 included, whatever the store; the corpus checks pixels.
S3_TESTS := tests/api tests/services

# AVATAR_TEST_SPLIT_DATABASES=1: one run, the API and service tests on both stores, each
# database beside one of them (tests/conftest.py says how).
# Python's packages and Debian's are installed side by side.
test:
	$(MAKE) --no-print-directory -j2 --output-sync=target install install-test-packages
	AVATAR_TEST_SPLIT_DATABASES=1 $(PYTEST) $(PYTEST_ARGS)

# The inner loop: no browser, no corpus, no child processes, no PostgreSQL, nothing long.
test-fast: install
	$(PYTEST) -m "not ($(SLOW))" $(PYTEST_ARGS)

# Debian packages the tests use, installed with apt-get when missing and this runs as root;
# otherwise the tests that need them skip (and fail under CI=true).
# $(call debian-packages,COMMAND:PACKAGE ...): one apt-get for every package whose command is
# missing.
define debian-packages
	@missing=""; for pair in $(1); do \
		command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	[ -z "$$missing" ] || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else \
			echo "not installed:$$missing (apt-get install$$missing); the tests that need them skip"; \
		fi; }
endef

# The browser tests use Debian's Chromium (Playwright never downloads one).
BROWSER := chromium:chromium
# The e-mail-safe JPEG test reads its JPEG with exiftool as well as with Pillow.
EXIFTOOL := exiftool:libimage-exiftool-perl
# The local cluster (`make cluster`, `make chaos`, tests/cluster) balances with Debian's HAProxy.
HAPROXY := haproxy:haproxy
# deploy/nginx/avatar.conf, the production answer for /media, runs under Debian's nginx in
# tests/test_nginx.py and in benchmarks/reads.py.
NGINX := nginx:nginx
# benchmarks/reads.py loads its servers with wrk (without it, with a slower load generator).
WRK := wrk:wrk

install-test-packages:
	$(call debian-packages,$(BROWSER) $(EXIFTOOL) $(HAPROXY) $(NGINX))
install-browser:
	$(call debian-packages,$(BROWSER))
install-exiftool:
	$(call debian-packages,$(EXIFTOOL))
install-haproxy:
	$(call debian-packages,$(HAPROXY))
install-nginx:
	$(call debian-packages,$(NGINX))
install-wrk:
	$(call debian-packages,$(WRK))

# The API and service tests with S3 storage (a moto S3 server on loopback, over HTTP), on both
# databases: what `make test` runs on S3 and more.
test-s3: install
	AVATAR_TEST_STORAGE=s3 $(PYTEST) -m "not corpus" $(PYTEST_ARGS) $(S3_TESTS)

# N replicas of `avatar-service serve` behind HAProxy on 127.0.0.1:$(CLUSTER_PORT), sharing the
# local PostgreSQL, moto's S3 server and a Redis of their own (README: "A cluster on one machine").
REPLICAS ?= 3
CLUSTER_PORT ?= 8800
cluster: install install-haproxy
	$(BIN)/python -m cluster start --replicas $(REPLICAS) --port $(CLUSTER_PORT)

cluster-stop:
	$(BIN)/python -m cluster stop

# Faults under load on a cluster of its own; prints the figures (README: "Faults under load").
chaos: install install-haproxy
	$(BIN)/python -m cluster.chaos $(CHAOS_ARGS)

# Benchmarks need pyvips (the bench extra) for the reference pipeline; the reads benchmark
# loads the service, a minimal app and nginx with wrk.
bench: install install-nginx install-wrk
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,bench]'
	$(BIN)/python -m benchmarks.pipeline --wins
	$(BIN)/python -m benchmarks.load
	$(BIN)/python -m benchmarks.pool
	$(BIN)/python -m benchmarks.batch
	$(BIN)/python -m benchmarks.formats
	$(BIN)/python -m benchmarks.reads

# 100 clients upload a 10 MB photo at once to a server started for it (SECURITY.md); exits
# non-zero when a rule breaks. CI runs a reduced version (tests/security/test_stress.py).
stress: install
	$(BIN)/python -m benchmarks.stress $(STRESS_ARGS)

# Style (ruff) and types (mypy, strict for app/; its settings are in pyproject.toml).
lint: install
	$(BIN)/ruff check app tests alembic benchmarks cluster
	$(BIN)/ruff format --check app tests alembic benchmarks cluster
	$(BIN)/python -m mypy

format: install
	$(BIN)/ruff format app tests alembic benchmarks cluster
	$(BIN)/ruff check --fix app tests alembic benchmarks cluster

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
