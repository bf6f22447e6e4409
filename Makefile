# Bronco: two commands do everything on a fresh machine.
#   make test   set up, check the services, lint, run every test
#   make run    set up, check the services, run the whole system
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup venv node check-services lint format test test-rabbitmq test-fast run run-procfile bench-e2e contracts clean

setup: venv node

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

node: node_modules/.installed
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

check-services: venv
	$(PY) manage.py check_services

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Browser tests (marker `browser`) drive Debian's Chromium; no browser is ever downloaded.
.PHONY: browser-deps
browser-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends chromium; \
	fi

# pytest exits 5 when it collected nothing: that is a failure here, never a pass.
# Then the end-to-end tests again with Celery on RabbitMQ (test-rabbitmq).
test: setup check-services lint browser-deps
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi
	$(MAKE) --no-print-directory test-rabbitmq

# The pipeline's end-to-end tests (tests/e2e) with Celery on RabbitMQ: quorum queues and
# publisher confirms, on a vhost of the test run's own that the tests re-create (RabbitMQ
# runs on these machines; Redis stays for locks, rate limits and results).
TEST_AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/bronco_test
test-rabbitmq: setup
	TEST_CELERY_BROKER_URL=$(TEST_AMQP_URL) $(PY) -m pytest -m e2e tests/e2e; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The fast layer: PostgreSQL and Redis only (fakes of Bronco's own broker and settlement
# protocols stand in for OpenD and the chain); no anvil, OpenD, Vault, browser or e2e.
FAST_MARKERS := not chain and not broker and not vault and not e2e and not browser
test-fast: venv check-services lint
	$(PY) -m pytest -m "$(FAST_MARKERS)" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The whole system plus the demo scenario, then serve until Ctrl-C (devtools/).
# Pass options with ARGS, e.g. make run ARGS=--once, ARGS="--fresh --deposits 50".
ARGS ?=
run: setup check-services
	$(PY) manage.py run_stack $(ARGS)

# Only the Bronco processes (web, a worker per queue, beat, listener, Flower) with honcho,
# for a chain, an OpenD and a Vault that already run elsewhere (see README).
run-procfile: setup check-services
	$(PY) manage.py migrate --noinput
	$(VENV)/bin/honcho -f Procfile start

# End-to-end benchmark (bench/e2e.py); pass options with ARGS.
bench-e2e: setup
	$(PY) bench/e2e.py $(ARGS)

contracts: node
	node chain/contracts/build.js

clean:
	rm -rf $(VENV) node_modules .pytest_cache var
