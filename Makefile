# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test check docs clean prometheus-tools browser apache-kafka postgresql

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP) $@

demo: $(STAMP)  ## set up and run the whole pipeline on this machine
	$(BIN)/churnwatch demo $(DEMO_ARGS)

test: $(TEST_STAMP) prometheus-tools browser apache-kafka postgresql  ## set up and run the full test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Debian's prometheus package brings promtool and the server the monitoring
# tests run; installed here when missing and we are root (as on CI).
prometheus-tools:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's prometheus package (promtool, server) for the tests"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
	    || echo "could not install prometheus: the Prometheus tests will be skipped"; \
	  else \
	    echo "promtool not found and not root: the Prometheus tests will be skipped"; \
	  fi; }

# Debian's PostgreSQL server for the ledger's tests on PostgreSQL (a throw-away
# cluster each session, tests/postgres.py); installed here when missing and we
# are root (as on CI). Debian keeps initdb off the PATH: looked for there too.
postgresql:
	@{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's postgresql package for the ledger's tests"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends postgresql >/dev/null; } \
	    || echo "could not install postgresql: the ledger's PostgreSQL tests will be skipped"; \
	  else \
	    echo "PostgreSQL not found and not root: the ledger's PostgreSQL tests will be skipped"; \
	  fi; }

# Apache Kafka's broker jars (the version of configs/versions.env) from Maven
# Central into ~/.cache/churnwatch/apache-kafka, once; the Apache Kafka tests
# are skipped, with the reason, where Java or Maven is missing.
apache-kafka: $(TEST_STAMP)
	@$(BIN)/python -c 'from churnwatch.core.apache_kafka import fetch_jars; print("Apache Kafka jars in", fetch_jars())' \
	  || echo "Apache Kafka unavailable: its tests will be skipped"

# Debian's chromium and its driver (and a Chinese font) for the web inbox's browser
# test; installed here when missing and we are root (as on CI).
browser:
	@command -v chromedriver >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium and chromium-driver for the browser test"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends chromium chromium-driver \
	      fonts-wqy-microhei >/dev/null; } \
	    || echo "could not install chromium: the browser test will be skipped"; \
	  else \
	    echo "chromedriver not found and not root: the browser test will be skipped"; \
	  fi; }

check: $(TEST_STAMP)  ## lint, format check, types, the layers (no upward import, no cycle)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy churnwatch
	$(BIN)/lint-imports

docs: $(STAMP)  ## regenerate docs/events.md from the record declarations
	$(BIN)/churnwatch docs events

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .churnwatch
