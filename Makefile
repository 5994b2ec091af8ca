# The two commands of the README. Both work on a fresh machine with Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test lint bench conformance venv

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,docs]'
	touch $@

venv: $(VENV)/.installed

# The whole suite once per driver: psycopg 3 (Django's choice when installed), then psycopg2.
test: venv
	$(PY) -m pytest --driver=psycopg $(PYTEST_ARGS)
	$(PY) -m pytest --driver=psycopg2 $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Django's own test suite on Django's backend and on this one, against a lab: equal, test by
# test, on both drivers. CONFORMANCE_ARGS="--apps backends --driver psycopg" runs a slice.
CONFORMANCE_ARGS ?=
conformance: venv
	$(PY) -m tests.conformance $(CONFORMANCE_ARGS)

bench: venv
	$(PY) -m tests.benchmarks

demo: venv
	$(PY) testproject/demo.py
