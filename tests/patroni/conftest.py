"""Both backends pointed at the session's Patroni cluster side by side.

``patroni`` and ``patroni_lab`` live in tests/conftest.py: the soak uses them too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from django_pg_failover.lab import PatroniCluster
from tests.aliases import add_alias, remove_alias
from tests.load import RequestLoop

# A new leader takes over up to ttl + loop_wait after the old one died; the
# backend must keep trying at least that long, with a margin for the promotion.
MARGIN = 9


def retry_timeout(cluster: PatroniCluster) -> float:
    return cluster.ttl + cluster.loop_wait + MARGIN


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
