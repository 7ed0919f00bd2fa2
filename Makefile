# Compute Interconnect: the developer's front door. `make` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
BROKER_PORT ?= 50051
TELEMETRY_PORT ?= 50052
# The development certificate authority and the platform's certificate (`manage.py tls_dev_ca`):
# made once by `make run` and `make up`, so agent channels are mutually authenticated with
# nothing set up by hand (docs/tls.md).
TLS_DIR ?= var/tls
# The suite runs against the machine's real servers.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/interconnect
TEST_CELERY_BROKER_URL ?= redis://127.0.0.1:6379/15

.DEFAULT_GOAL := help
.PHONY: help run test lint format protos migrate seed bench up down check-deploy clean fuzz faults fault-table
# `make up` runs the production topology as local processes against the machine's servers.
UP_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/interconnect
UP_CELERY_BROKER_URL ?= redis://127.0.0.1:6379/0
UP_ENV = DATABASE_URL=$(UP_DATABASE_URL) CELERY_BROKER_URL=$(UP_CELERY_BROKER_URL) \
	CACHE_URL=rediscache://127.0.0.1:6379/1 LOG_FORMAT=json PLATFORM_TLS_DIR=$(abspath $(TLS_DIR))

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

protos: $(VENV)/.installed ## Generate Python code from protos/*.proto
	$(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. protos/*.proto

migrate: protos ## Apply migrations (embedded SQLite unless DATABASE_URL is set)
	$(PY) manage.py migrate --noinput -v0

seed: migrate ## Load the national topology, catalog and demo data
	$(PY) manage.py seed_national_topology
	$(PY) manage.py seed_demo
	$(PY) manage.py setup_schedules
	$(PY) manage.py tls_dev_ca --dir $(TLS_DIR)

run: seed ## Set up and run the whole platform on embedded defaults (no server needed)
	@$(PY) manage.py demo_banner --port $(PORT) --broker-port $(BROKER_PORT) --telemetry-port $(TELEMETRY_PORT)
	PLATFORM_TLS_DIR=$(abspath $(TLS_DIR)) PORT=$(PORT) BROKER_PORT=$(BROKER_PORT) \
		TELEMETRY_PORT=$(TELEMETRY_PORT) $(VENV)/bin/honcho -f Procfile.dev start

lint: protos ## ruff lint and format check, mypy (config in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(VENV)/.installed ## ruff format and autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: protos ## Set up and run lint and the whole suite against PostgreSQL and Redis
	@bash .ci/ensure-services.sh
	$(MAKE) --no-print-directory lint
	$(PY) manage.py makemigrations --check --dry-run -v0
	@# A process left over from an interrupted run must not keep the old test database open.
	-@psql "$(dir $(TEST_DATABASE_URL))postgres" -qtc "SELECT pg_terminate_backend(pid) \
		FROM pg_stat_activity WHERE datname = 'test_$(notdir $(TEST_DATABASE_URL))'" >/dev/null 2>&1
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_CELERY_BROKER_URL) \
		$(VENV)/bin/pytest $(PYTEST_ARGS)

check-deploy: $(VENV)/.installed ## Django's deployment checklist with production settings
	$(PY) manage.py tls_dev_ca --dir $(TLS_DIR) >/dev/null
	DJANGO_PRODUCTION=1 DJANGO_SECRET_KEY=$$(openssl rand -hex 40) DJANGO_ALLOWED_HOSTS=example.org \
		PLATFORM_TLS_DIR=$(abspath $(TLS_DIR)) $(PY) manage.py check --deploy --fail-level WARNING

# bench/gpu_budget.py needs a CUDA device (exit 2 without one): bench/gpu_check.sh runs it.
bench: protos ## Run the benchmarks in bench/ (prints figures)
	@for b in $(filter-out bench/gpu_budget.py,$(wildcard bench/*.py)); do \
		echo "== $$b"; $(PY) $$b || exit 1; done

faults: protos ## Run the fault-injection suite (private PostgreSQL/Redis; prints FIGURE lines)
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_CELERY_BROKER_URL) \
		$(VENV)/bin/pytest tests/faults -s -p no:warnings $(PYTEST_ARGS)

fault-table: ## The README's fault table from test-artifacts/figures.jsonl (latest run of each row)
	@$(PY) -m tests.harness.figures

up: protos ## Start web x2, workers x2, beat, broker x2, telemetry as local processes (PostgreSQL + Redis)
	@bash .ci/ensure-services.sh
	psql -h 127.0.0.1 -U postgres -tc "SELECT 1 FROM pg_database WHERE datname='interconnect'" | grep -q 1 \
		|| psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE interconnect" >/dev/null
	$(UP_ENV) $(PY) manage.py migrate --noinput -v0
	$(UP_ENV) $(PY) manage.py seed_national_topology
	$(UP_ENV) $(PY) manage.py tls_dev_ca --dir $(TLS_DIR)
	@mkdir -p var
	@test ! -f var/up.pid || { echo "already up (var/up.pid); make down first"; exit 1; }
	$(UP_ENV) WEB1_PORT=8001 WEB2_PORT=8002 BROKER_PORT=$(BROKER_PORT) TELEMETRY_PORT=50052 \
		setsid $(VENV)/bin/honcho -f Procfile.up start > var/up.log 2>&1 & echo $$! > var/up.pid
	@echo "up: web 127.0.0.1:8001 and :8002, broker :$(BROKER_PORT), telemetry :50052 (mutual TLS, $(TLS_DIR)); logs in var/up.log"

down: ## Stop what `make up` started
	@test -f var/up.pid || { echo "not up"; exit 0; }
	-kill -TERM -- -$$(cat var/up.pid) 2>/dev/null || kill -TERM $$(cat var/up.pid)
	@rm -f var/up.pid; echo "down"

fuzz: $(VENV)/.installed ## Long schemathesis campaign against a running `make run` (PORT), as the demo operator
	$(VENV)/bin/schemathesis run http://127.0.0.1:$(PORT)/api/schema/?format=json --max-examples 200 \
		--checks not_a_server_error,response_schema_conformance \
		-H "Authorization: Bearer $$($(PY) -c "import json;print(json.load(open('var/demo-tokens.json'))['zhongwei'])")"

clean: ## Remove the virtual environment and local data
	rm -rf $(VENV) var protos/*_pb2*.py protos/*_pb2.pyi
