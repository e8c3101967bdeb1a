# relaybox — every operator entry point. `make help` lists them.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
UV ?= uv
RUN := $(UV) run --frozen
PY_SRC := libs services clients tests bench deploy

# Development defaults for the targets that run the services (any RELAYBOX_* you set wins).
run token seed chat-tail: export RELAYBOX_DEV_MODE ?= true
# The users of one organisation share its rows (the messenger needs that): the `org` claim.
run token seed chat-tail: export RELAYBOX_AUTH__TENANT_CLAIM ?= org
run: export RELAYBOX_LOG__JSON_FORMAT ?= false


.DEFAULT_GOAL := help

.PHONY: help install uv migrate preflight run seed token chat-tail test test-fast chaos chaos-smoke demo fuzz bench bench-smoke lint fmt typecheck erd up down postman cloud-diagram

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

uv:
	@command -v $(UV) >/dev/null || python3 -m pip install --quiet uv

install: uv ## install every package and dev tool into .venv (uv, Python 3.11)
	$(UV) sync --frozen --python python3.11

preflight: install ## check PostgreSQL and RabbitMQ answer at the configured URLs
	$(RUN) python -m relaybox.common.preflight

migrate: install ## create the database if missing and apply the migrations
	$(RUN) python -m relaybox.common.db upgrade

seed: install ## load demo conversations through mock-meta's signed webhooks (needs `make run`)
	$(RUN) python -m relaybox.mock_meta.seed

SUB ?= dev
TENANT ?= dev
token: install ## print a dev bearer token (all scopes; SUB=alice: another user of org dev; TENANT=acme: another org)
	@$(RUN) relaybox token --sub $(SUB) --tenant $(TENANT)

chat-tail: install ## print a user's live chat events as they arrive (needs `make run`; SUB=alice, TENANT=acme as for token)
	$(RUN) python -m relaybox.realtime tail --sub $(SUB) --tenant $(TENANT) $(CHAT_TAIL_ARGS)

run: preflight migrate ## start api, publisher, consumer, realtime and mock-meta (honcho), print URLs and a token
	@echo ""
	@echo "  API         http://127.0.0.1:3000   (OpenAPI + Swagger UI at /api)"
	@echo "  mock-meta   http://127.0.0.1:4000   (received emails: /smtp/messages; SMTP sink on :1025)"
	@echo "  realtime    ws://127.0.0.1:3100/chat/stream   (a ticket from POST /chat/stream-tickets; make chat-tail SUB=alice)"
	@echo "  publisher   http://127.0.0.1:9101/metrics   consumer http://127.0.0.1:9102/metrics   realtime http://127.0.0.1:3100/metrics"
	@echo "  dev token   $$($(RUN) relaybox token --sub dev --tenant dev)"
	@echo ""
	$(RUN) honcho start -f Procfile

test: install ## the whole suite against real PostgreSQL and RabbitMQ
	$(RUN) pytest -q

test-fast: install ## unit tests only
	$(RUN) pytest -q tests/unit

chaos: install ## the chaos run (10,000 items; kills, RabbitMQ and PostgreSQL restarts, provider faults) and its ledger
	$(RUN) python -m tests.chaos

chaos-smoke: install ## the ~60 s chaos smoke of the test suite (kills and provider faults only)
	$(RUN) python -m tests.chaos --smoke

demo: install ## evidence that it runs: its own database and stack, a mailing, Meta webhooks, a retry, a chat; demo-report.md
	$(RUN) python -m tests.demo $(DEMO_ARGS)

FUZZ_EXAMPLES ?= 200
fuzz: install ## schemathesis --checks all against a live API on a fresh database (FUZZ_EXAMPLES per operation)
	$(RUN) python -m tests.fuzz --max-examples $(FUZZ_EXAMPLES) $(FUZZ_ARGS)

bench: install ## benchmarks (ratios against raw baselines, same script)
	$(RUN) python -m bench

bench-smoke: install ## a few seconds of each benchmark (CI)
	$(RUN) python -m bench --quick

lint: install ## ruff (lint + format check) and mypy --strict
	$(RUN) ruff check $(PY_SRC)
	$(RUN) ruff format --check $(PY_SRC)
	$(RUN) mypy $(PY_SRC)

fmt: install ## apply ruff fixes and formatting
	$(RUN) ruff check --fix $(PY_SRC)
	$(RUN) ruff format $(PY_SRC)

erd: install ## the messenger's ERD from the models: docs/messenger/database-model.dot, rendered to .png (graphviz's dot)
	$(RUN) python -m relaybox.common.db.erd

postman: install ## regenerate docs/postman/relaybox.postman_collection.json from the API's OpenAPI document
	$(RUN) python -m tests.postman

cloud-diagram: ## render docs/cloud-architecture.dot to docs/cloud-architecture.png (graphviz's dot)
	dot -Tpng -Gdpi=110 docs/cloud-architecture.dot -o docs/cloud-architecture.png

up: ## docker compose up (needs a Docker engine)
	docker compose up --build

down: ## docker compose down
	docker compose down
