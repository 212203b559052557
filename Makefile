# Two commands: `make run` sets everything up and serves the portal; `make test` sets everything
# up and runs the whole suite. Both work on a fresh machine (no PostgreSQL or Redis needed).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
# The first Python >= 3.12 on PATH (pyenv's shims honour .python-version).
PYTHON ?= $(shell for p in python3.14 python3.13 python3.12 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null \
	&& echo $$p && break; done)
PORT ?= 8000
QUICK ?=
export PORT

.PHONY: install run test lint format bench lock browser clean

$(STAMP): requirements-dev.lock
	@if [ -z "$(PYTHON)" ]; then echo "Python 3.12 or newer is needed (see .python-version)." >&2; exit 1; fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.lock
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m fastgpt_portal.lib.devserver

# Headless Chromium from Debian's packages for the browser tests (never a downloaded browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
		else echo "Install Debian's chromium package for the browser tests (sudo apt-get install chromium)." >&2; exit 1; fi; }

test: install browser
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) -m bench.run $(if $(QUICK),--quick,)

# Re-pin dependencies after editing pyproject.toml.
lock: install
	$(VENV)/bin/uv lock
	$(VENV)/bin/uv export --frozen --no-emit-project --no-header --no-dev --format requirements-txt -o requirements.lock
	$(VENV)/bin/uv export --frozen --no-emit-project --no-header --format requirements-txt -o requirements-dev.lock

clean:
	rm -rf $(VENV) staticfiles db.sqlite3 test-db.sqlite3* .pytest_cache
