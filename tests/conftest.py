"""Fixtures shared by the suite.

``pg_lab`` and ``pg_cluster`` come from the lab's pytest plugin. Here they get
testproject's tables (migrated once per lab, through this backend, then kept
in the lab's snapshot) and Django aliases that point at them. ``patroni`` and
``patroni_lab`` do the same for the plugin's Patroni cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connections

from django_pg_failover.background import workers
from django_pg_failover.connecting import search
from django_pg_failover.connecting.memory import host_status
from django_pg_failover.lab import Cluster, PatroniCluster
from django_pg_failover.lab.system import wait_for
from tests.aliases import add_alias, remove_alias

FAST = {"connect_timeout": 2, "failover": {"retry_timeout": 15.0, "backoff_max": 0.25}}


@pytest.fixture(scope="session")
def lab(pg_lab: Cluster, django_db_blocker) -> Cluster:
    """The session's lab, with ``default`` pointing at it and the shop tables migrated."""
    with django_db_blocker.unblock():
        connections.close_all()
        connections["default"].settings_dict.update(pg_lab.django_database(OPTIONS=dict(FAST)))
        call_command("migrate", verbosity=0)
        connections.close_all()
    pg_lab.snapshot()
    return pg_lab


def quiet_background(timeout: float = 15.0) -> None:
    """Wait until the previous test's background work is over: a connect attempt still
    in flight (a hung host's lasts connect_timeout) or a watcher still looking records
    what it finds in the process's host memory, after this test has cleared it."""

    def quiet() -> bool:
        watching = any(w._thread is not None for w in list(search.watchers.values()))
        return workers.finished == workers.submitted and not watching

    wait_for(quiet, timeout, "the previous test's connect attempts and watchers to end")


@pytest.fixture
def cluster(lab: Cluster, pg_cluster: Cluster, django_db_blocker) -> Iterator[Cluster]:
    """The lab for one test: healthy at the start, database access allowed."""
    quiet_background()
    host_status.clear()
    with django_db_blocker.unblock():
        yield pg_cluster
        connections.close_all()
    host_status.clear()


@pytest.fixture
def make_alias(cluster: Cluster) -> Iterator[Callable[..., str]]:
    """Register a temporary alias: ``make_alias(HOST=..., OPTIONS=..., lab=other_cluster)``."""
    created: list[str] = []

    def make(stock: bool = False, lab: Cluster | None = None, **overrides: Any) -> str:
        options = {**FAST, **overrides.pop("OPTIONS", {})}
        if stock:
            options.pop("failover")
        settings = (lab or cluster).django_database(stock=stock, OPTIONS=options, **overrides)
        alias = add_alias(settings)
        created.append(alias)
        return alias

    yield make
    for alias in created:
        remove_alias(alias)


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
    quiet_background()
    host_status.clear()
    with django_db_blocker.unblock():
        yield patroni_cluster
        connections.close_all()
    host_status.clear()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("soak", "chaos soak")
    group.addoption("--soak-seconds", type=float, default=0.0, help="run the soak this long")
    group.addoption("--soak-seed", type=int, default=None, help="replay a soak run")


@pytest.fixture
def failover_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="django_pg_failover")
    return caplog
