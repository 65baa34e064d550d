# tunnelgate: `make demo` runs the product locally, `make test` checks it.
# Both targets do their own set-up on a fresh machine.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
IDP_DIR := tests/idp

.PHONY: demo test lint typecheck pytest bench setup clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tunnelgate needs Python 3.11 or newer (found " + sys.version.split()[0] + ")")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# Everything the tests need beyond Python packages: the test identity provider's npm packages,
# Debian's chromium for browser tests, iproute2 for the network-namespace test.
test-deps: $(STAMP)
	@bash scripts/test-deps.sh

demo: $(STAMP)
	$(PY) demo/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check tunnel edge connector tests bench demo

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest -q

test: test-deps lint typecheck pytest

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	bash bench/setup.sh
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) $(IDP_DIR)/node_modules .mypy_cache .ruff_cache .pytest_cache
