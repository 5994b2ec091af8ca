"""A real Patroni cluster for the suite, with both backends pointed at it side by side."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from django.core.management import call_command
from django.db import connections

from django_pg_failover.lab import PatroniCluster
from django_pg_failover.status import host_status
from tests.aliases import add_alias, remove_alias
from tests.load import RequestLoop

# A new leader takes over up to ttl + loop_wait after the old one died; the
# backend must keep trying at least that long, with a margin for the promotion.
MARGIN = 9


def retry_timeout(cluster: PatroniCluster) -> float:
    return cluster.ttl + cluster.loop_wait + MARGIN


@pytest.fixture(scope="session")
def patroni(pg_patroni: PatroniCluster, django_db_blocker) -> PatroniCluster:
    """The session's Patroni cluster, with the shop tables migrated through this backend."""
    with django_db_blocker.unblock():
        alias = add_alias(pg_patroni.django_database(OPTIONS={"connect_timeout": 2}))
        try:
            call_command("migrate", database=alias, verbosity=0)
        finally:
            remove_alias(alias)
    return pg_patroni


@pytest.fixture
def patroni_lab(
    patroni: PatroniCluster, patroni_cluster: PatroniCluster, django_db_blocker
) -> Iterator[PatroniCluster]:
    """The Patroni cluster for one test: healthy at the start, database access allowed."""
    host_status.clear()
    with django_db_blocker.unblock():
        yield patroni_cluster
        connections.close_all()
    host_status.clear()


@pytest.fixture
def request_loops(patroni_lab: PatroniCluster) -> Iterator[Callable[..., RequestLoop]]:
    """``request_loops(stock=False, persistent=False)``: a loop on a new alias of its own.

    Ours keeps trying to connect for ttl + loop_wait + a margin; Django's own
    backend is set up at its best (libpq multi-host, read-write). Both use a
    2 s connect_timeout. ``persistent`` keeps connections across requests
    (CONN_MAX_AGE) with Django's health checks, which the docs ask for: without
    them the first query on a connection that died while idle fails, on
    either backend.
    """
    aliases: list[str] = []

    def make(stock: bool = False, persistent: bool = False) -> RequestLoop:
        options: dict = {"connect_timeout": 2}
        if not stock:
            options["failover"] = {
                "retry_timeout": retry_timeout(patroni_lab),
                "backoff_max": 0.25,
            }
        alias = add_alias(
            patroni_lab.django_database(
                stock=stock,
                OPTIONS=options,
                CONN_MAX_AGE=600 if persistent else 0,
                CONN_HEALTH_CHECKS=persistent,
            )
        )
        aliases.append(alias)
        label = ("stock" if stock else "ours") + (" persistent" if persistent else "")
        return RequestLoop(alias, label, threading.Event())

    yield make
    for alias in aliases:
        remove_alias(alias)
