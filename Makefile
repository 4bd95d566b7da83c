# streamrec — make help lists the targets.
SHELL := /bin/bash
VENV ?= $(HOME)/.venvs/streamrec
PY := $(VENV)/bin/python
STAMP := $(VENV)/.streamrec-$(shell cat pyproject.toml | sha1sum | cut -c1-12)-$(shell echo $(CURDIR) | sha1sum | cut -c1-8)

.PHONY: help install demo test test-unit test-integration lint typecheck bench clean-services

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/' | column -t -s $$'\t'

$(STAMP): pyproject.toml
	@command -v python3 >/dev/null || { echo "python3 (3.11+) is required"; exit 1; }
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,dev]'
	@rm -f $(VENV)/.streamrec-*; touch $(STAMP)

install: $(STAMP)  ## create the virtualenv ($(VENV)) with serving, training and dev packages
	@deploy/local/kafka.sh fetch
	@deploy/local/redis.sh install
	@deploy/local/promtool.sh install

demo: install  ## the whole pipeline on sample data: local Kafka+Redis, train, worker, replay, report
	$(PY) -m stream.cli demo

test: install  ## every test: unit, then integration against a real local Kafka and Redis
	$(PY) -m pytest -q

test-unit: install  ## unit tests only (no services)
	$(PY) -m pytest -q tests/unit

test-integration: install  ## integration tests only
	$(PY) -m pytest -q tests/integration

lint: install  ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install  ## mypy
	$(VENV)/bin/mypy stream models features topics

bench: install  ## every benchmark, then one summary table (bench/run_all.py, <15 min; Kafka 29092, Redis 26379): docs/benchmarks.md
	$(PY) bench/run_all.py

clean-services:  ## stop local Kafka and Redis started by the scripts
	-deploy/local/kafka.sh stop
	-deploy/local/redis.sh stop
