"""Both backends pointed at the session's Patroni cluster side by side, directly or
through HAProxy.

``patroni`` and ``patroni_lab`` live in tests/conftest.py: the soak uses them too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from django_pg_failover.lab import PatroniCluster
from django_pg_failover.lab.haproxy import HAProxy
from tests.aliases import add_alias, remove_alias
from tests.load import RequestLoop

# A new leader takes over up to ttl + loop_wait after the old one died; the
# backend must keep trying at least that long, with a margin for the promotion.
MARGIN = 9


def retry_timeout(cluster: PatroniCluster) -> float:
    return cluster.ttl + cluster.loop_wait + MARGIN


@pytest.fixture(scope="module")
def haproxy_running(patroni: PatroniCluster) -> Iterator[HAProxy]:
    """HAProxy in front of the session's cluster, for the tests of one module."""
    yield patroni.start_haproxy()
    patroni.stop_haproxy()


@pytest.fixture
def haproxy(haproxy_running: HAProxy, patroni_lab: PatroniCluster) -> HAProxy:
    """HAProxy, routing to the leader alone when the test starts."""
    return patroni_lab.start_haproxy()


@pytest.fixture
def request_loops(patroni_lab: PatroniCluster) -> Iterator[Callable[..., RequestLoop]]:
    """``request_loops(stock=False, persistent=False, proxy=None, pool=False)``: a loop
    on a new alias of its own.

    Ours keeps trying to connect for ttl + loop_wait + a margin; Django's own
    backend is set up at its best (libpq multi-host, read-write). Both use a
    2 s connect_timeout. ``persistent`` keeps connections across requests
    (CONN_MAX_AGE) with Django's health checks, which the docs ask for: without
    them the first query on a connection that died while idle fails, on
    either backend. ``proxy``: HOST is HAProxy's address alone (the loop asks
    the server which one it reached). ``pool``: Django's pool (psycopg 3).
    """
    aliases: list[str] = []

    def make(
        stock: bool = False,
        persistent: bool = False,
        proxy: HAProxy | None = None,
        pool: bool = False,
    ) -> RequestLoop:
        options: dict = {"connect_timeout": 2}
        if not stock:
            options["failover"] = {
                "retry_timeout": retry_timeout(patroni_lab),
                "backoff_max": 0.25,
            }
        if pool:
            options["pool"] = {"min_size": 2, "max_size": 2}
        settings = {
            "stock": stock,
            "OPTIONS": options,
            "CONN_MAX_AGE": 600 if persistent else 0,
            "CONN_HEALTH_CHECKS": persistent,
        }
        if proxy is None:
            database = patroni_lab.django_database(**settings)
        else:
            database = patroni_lab.proxy_database(**settings)
        alias = add_alias(database)
        aliases.append(alias)
        label = ("stock" if stock else "ours") + (" persistent" if persistent else "")
        label += " pool" if pool else ""
        return RequestLoop(alias, label, threading.Event(), behind_proxy=proxy is not None)

    yield make
    for alias in aliases:
        remove_alias(alias)
