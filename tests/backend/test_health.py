"""The health check of an alias against the lab: the view (every Django) and
django-health-check's ``FailoverDatabase`` (django-health-check 4: Django 5.2+),
through a crash, a fenced primary, a lagging standby, and a stale connection of
the check's own thread."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.test import Client
from django.urls import path

from django_pg_failover.drivers import get_driver
from django_pg_failover.lab import Cluster, Node
from django_pg_failover.lab.system import wait_for
from django_pg_failover.views import health
from tests.markers import needs_pool

try:
    from health_check.base import HealthCheck
    from health_check.checks import Database

    from django_pg_failover.healthcheck import FailoverDatabase, failover_checks
except ImportError:  # django-health-check 3.x (Django 4.2) or none
    HealthCheck = None

pytestmark = [pytest.mark.timeout(120), pytest.mark.urls(__name__)]

needs_health_check = pytest.mark.skipif(
    HealthCheck is None,
    reason="django-health-check 4 (the check API FailoverDatabase implements) needs Django 5.2+",
)

urlpatterns = [
    path("health/<str:alias>/", health),
    path("health/<str:alias>/timeout-1/", health, {"timeout": 1}),
    path("health/<str:alias>/lag-1/", health, {"max_lag_seconds": 1}),
]

# The view's worst case: every host at once, connect_timeout each, a second for the queries.
BOUND = get_driver().connect_wait(2) + 1


def address(node: Node) -> str:
    return f"127.0.0.1:{node.port}"


def get(cluster: Cluster, url: str) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    response = Client().get(url)
    elapsed = time.monotonic() - started
    assert response["Content-Type"] == "application/json"
    assert "no-store" in response["Cache-Control"]
    assert cluster.password not in response.content.decode()
    return response.status_code, json.loads(response.content), elapsed


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    """One long-lived thread, as django-health-check's executor threads are."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool
        pool.submit(connections.close_all).result()


def check(executor: ThreadPoolExecutor, check: Any) -> str | None:
    """Run a django-health-check check the way its view does; its error, or None."""
    result = asyncio.run(check.get_result(executor))
    return None if result.error is None else str(result.error)


def commit(cluster: Cluster) -> None:
    # It must write WAL: a commit that wrote none is not flushed at once.
    cluster.primary.query("CREATE TABLE health_lag (); DROP TABLE health_lag")


def pause_replay(cluster: Cluster, standby: Node) -> Node:
    """A standby that replayed a commit (its lag seconds count from it), then stopped
    replaying with a commit of the primary's left to replay."""
    commit(cluster)
    cluster.wait_replayed([standby])
    standby.query("SELECT pg_wal_replay_pause()")
    wait_for(
        lambda: standby.scalar("SELECT pg_get_wal_replay_pause_state()") == "paused",
        10,
        "replay to pause",
    )
    commit(cluster)
    return standby


# -- the view -----------------------------------------------------------------------------


def test_view_through_a_crash_of_the_primary(cluster: Cluster, make_alias) -> None:
    alias = make_alias()
    old = cluster.primary
    code, body, _ = get(cluster, f"/health/{alias}/")
    assert code == 200, body
    assert body["healthy"] is True
    assert body["problem"] is None
    assert body["alias"] == alias
    assert body["would_connect"] == address(old)
    assert [h["port"] for h in body["hosts"]] == [n.port for n in cluster.nodes]

    cluster.crash(old)
    code, body, elapsed = get(cluster, f"/health/{alias}/")
    assert code == 503
    assert body["healthy"] is False
    assert body["would_connect"] is None
    assert body["problem"].startswith("no host suits target_session_attrs=read-write (")
    assert f"{address(old)} Connection refused" in body["problem"]
    assert elapsed < BOUND

    new = cluster.promote()
    code, body, _ = get(cluster, f"/health/{alias}/")
    assert code == 200, body
    assert body["would_connect"] == address(new)


def test_view_is_bounded_by_its_timeout_with_atomic_requests(cluster: Cluster, make_alias) -> None:
    # ATOMIC_REQUESTS would open the alias's own connection first and wait
    # retry_timeout (15 s here) for a server.
    alias = make_alias(ATOMIC_REQUESTS=True)
    cluster.hang(cluster.primary)
    code, body, elapsed = get(cluster, f"/health/{alias}/timeout-1/")
    assert code == 503
    assert elapsed < get_driver().connect_wait(1) + 1.5
    assert "timeout expired" in body["problem"]


def test_view_answers_only_get_and_head(cluster: Cluster, make_alias) -> None:
    alias = make_alias()
    assert Client().post(f"/health/{alias}/").status_code == 405
    assert Client().head(f"/health/{alias}/").status_code == 200


def test_view_never_shows_a_password_and_refuses_other_engines(
    cluster: Cluster, make_alias
) -> None:
    wrong = "Not-The-Password-42"
    alias = make_alias(PASSWORD=wrong)
    response = Client().get(f"/health/{alias}/")
    assert response.status_code == 503
    assert wrong not in response.content.decode()
    assert 'password authentication failed for user "app"' in response.json()["problem"]
    stock = make_alias(stock=True)
    with pytest.raises(ImproperlyConfigured, match="its health check needs ENGINE"):
        Client().get(f"/health/{stock}/")


def test_view_on_a_fenced_primary(cluster: Cluster, make_alias) -> None:
    read_write = make_alias()
    primary_only = make_alias(OPTIONS={"target_session_attrs": "primary"})
    fenced = cluster.make_read_only(cluster.primary)
    code, body, _ = get(cluster, f"/health/{read_write}/")
    assert code == 503
    assert f"{address(fenced)} primary (read-only)" in body["problem"]
    code, body, _ = get(cluster, f"/health/{primary_only}/")
    assert code == 200, body
    assert body["would_connect"] == address(fenced)


def test_view_on_a_lagging_standby(cluster: Cluster, make_alias) -> None:
    alias = make_alias(OPTIONS={"target_session_attrs": "standby"})
    paused = pause_replay(cluster, cluster.standbys[0])  # listed first: the alias's choice
    try:
        bodies: list[dict[str, Any]] = []

        def lagging() -> bool:
            code, body, _ = get(cluster, f"/health/{alias}/lag-1/")
            bodies.append(body)
            return code == 503

        wait_for(lagging, 15, "the paused standby to lag more than a second")
        assert bodies[-1]["problem"].startswith(f"{address(paused)} is a standby ")
        assert "max_lag_seconds=1," in bodies[-1]["problem"]
        # Without a limit, the same lag is reported and the alias healthy.
        code, body, _ = get(cluster, f"/health/{alias}/")
        assert code == 200
        (row,) = [h for h in body["hosts"] if h["port"] == paused.port]
        assert row["replay_lag_bytes"] > 0
        assert row["replay_lag_seconds"] > 1
    finally:
        paused.query("SELECT pg_wal_replay_resume()")
    cluster.wait_replayed([paused])
    code, body, _ = get(cluster, f"/health/{alias}/lag-1/")
    assert code == 200, body


# -- django-health-check ------------------------------------------------------------------


@needs_health_check
def test_check_through_a_crash_of_the_primary(
    cluster: Cluster, make_alias, executor: ThreadPoolExecutor
) -> None:
    alias = make_alias()
    assert check(executor, FailoverDatabase(alias=alias)) is None
    old = cluster.crash(cluster.primary)
    error = check(executor, FailoverDatabase(alias=alias))
    assert error is not None
    assert error.startswith("Unavailable: no host suits target_session_attrs=read-write")
    assert f"{address(old)} Connection refused" in error
    cluster.promote()
    assert check(executor, FailoverDatabase(alias=alias)) is None


@needs_health_check
def test_check_on_a_fenced_primary_and_a_lagging_standby(
    cluster: Cluster, make_alias, executor: ThreadPoolExecutor
) -> None:
    read_write = make_alias()
    replica = make_alias(OPTIONS={"target_session_attrs": "standby"})
    paused = pause_replay(cluster, cluster.standbys[0])
    try:
        errors: list[str | None] = []

        def lagging() -> bool:
            errors.append(check(executor, FailoverDatabase(alias=replica, max_lag_seconds=1)))
            return errors[-1] is not None

        wait_for(lagging, 15, "the paused standby to lag more than a second")
        assert errors[-1].startswith(f"Unavailable: {address(paused)} is a standby ")
        assert check(executor, FailoverDatabase(alias=replica)) is None
    finally:
        paused.query("SELECT pg_wal_replay_resume()")
    fenced = cluster.make_read_only(cluster.primary)
    error = check(executor, FailoverDatabase(alias=read_write))
    assert error is not None
    assert f"{address(fenced)} primary (read-only)" in error


@needs_health_check
def test_stale_connection_of_the_checks_own_thread(
    cluster: Cluster, make_alias, executor: ThreadPoolExecutor
) -> None:
    """The check's thread holds the alias's connection to the old primary when it dies."""
    alias = make_alias()
    executor.submit(lambda: connections[alias].ensure_connection()).result()
    assert executor.submit(lambda: connections[alias].connection is not None).result()
    new = cluster.failover().new_primary
    assert cluster.primary.name == new
    # The thread's connection is the dead one: django-health-check's Database check,
    # reusing it, reports the alias down (its issue #755).
    assert executor.submit(lambda: connections[alias].connection is not None).result()
    generic = check(executor, Database(alias=alias))
    assert generic is not None
    assert generic.startswith("Unavailable")
    # Ours looks at every host on its own connections: the new primary is there.
    assert check(executor, FailoverDatabase(alias=alias)) is None


@needs_health_check
@needs_pool
def test_check_needs_no_connection_from_the_pool(
    cluster: Cluster, make_alias, executor: ThreadPoolExecutor
) -> None:
    """Every pooled connection taken (and to the old primary): the check answers at once."""
    alias = make_alias(OPTIONS={"pool": {"min_size": 1, "max_size": 1, "timeout": 10}})
    connections[alias].ensure_connection()  # the pool's only connection, held
    started = time.monotonic()
    assert check(executor, FailoverDatabase(alias=alias)) is None
    assert time.monotonic() - started < BOUND
    cluster.failover()
    assert check(executor, FailoverDatabase(alias=alias)) is None


@needs_health_check
def test_failover_checks_lists_every_alias_of_the_backend(make_alias) -> None:
    alias = make_alias()
    stock = make_alias(stock=True)
    listed = failover_checks(max_lag_seconds=5)
    assert listed[0] == (FailoverDatabase, {"alias": "default", "max_lag_seconds": 5})
    assert (FailoverDatabase, {"alias": alias, "max_lag_seconds": 5}) in listed
    assert stock not in [options["alias"] for _, options in listed]
