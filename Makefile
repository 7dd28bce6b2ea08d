# make test  - install into .venv, start PostgreSQL/RabbitMQ if stopped, lint, type-check, test
# make unit  - the unit layer only (no services needed)
# make run   - see README (make run-office: with a MariaDB office too)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: test unit lint services run run-office bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,demo]'
	touch $(STAMP)

# The pipeline at work: PostgreSQL and RabbitMQ as configured (APIEVENTS_DATABASE_URL,
# APIEVENTS_BROKER_URL), or an embedded PostgreSQL and an in-process broker. Ctrl-C stops it.
run: $(STAMP)
	$(BIN)/apievents demo

# `make run` plus an Open Dental-shaped MariaDB office (source "office") delivering beside the
# PostgreSQL tables. MARIADB_URL is a server (not a database) whose user may create a database.
MARIADB_URL ?= mysql://root@127.0.0.1:3306
run-office: $(STAMP)
	$(BIN)/apievents demo --mariadb-office $(MARIADB_URL)

services:
	bash scripts/services.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

test: $(STAMP) lint services
	$(BIN)/pytest -q -p no:cacheprovider tests/unit
	$(BIN)/pytest -q -p no:cacheprovider --durations=10 tests/integration tests/acceptance

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

# Throughput and latency of every scenario against the seed loop, the raw limit and a Celery
# peer (minutes).
bench: $(STAMP) services
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench.run
