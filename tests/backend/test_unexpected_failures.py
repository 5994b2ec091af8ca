"""An attempt that fails with an exception that is not the driver's: that host's failure.

The settings refuse a host name DNS cannot hold (tests/unit/test_hosts.py), so
these tests build the Connector (and a pool, and pg_hosts' probes) straight
from a host list with such a name in it: the backend must not depend on that
validation to keep working. ``db1..example.com`` makes psycopg 3 raise
``UnicodeError`` (from Python's IDNA codec, in its own name lookup) on every
attempt; psycopg2's libpq looks the name up in C and fails it as an ordinary
``OperationalError`` ("could not translate host name"). glibc refuses the
name before sending any DNS query: nothing leaves the machine.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from django_pg_failover import signals
from django_pg_failover.base import DatabaseWrapper
from django_pg_failover.connecting.attempt import Landing
from django_pg_failover.connecting.connector import Connector
from django_pg_failover.connecting.memory import HostState, host_status
from django_pg_failover.connecting.roles import Role
from django_pg_failover.connecting.search import HostList, Watcher, _HostWatch
from django_pg_failover.connecting.verdicts import Verdict
from django_pg_failover.drivers import get_driver
from django_pg_failover.lab import Cluster
from django_pg_failover.lab.common import APP_DATABASE
from django_pg_failover.lab.system import wait_for
from django_pg_failover.management.commands.pg_hosts import report_hosts
from django_pg_failover.settings.hosts import Host
from django_pg_failover.settings.policy import FailoverPolicy
from tests.markers import needs_pool

pytestmark = pytest.mark.timeout(120)

BAD_NAME = "db1..example.com"
BAD = Host(BAD_NAME, 5432)
POLICY = FailoverPolicy(retry_timeout=15, backoff_max=0.25)


def reason_for_the_bad_name() -> str:
    """How the driver fails the name: its own error (psycopg2), or not (psycopg 3)."""
    if get_driver().name == "psycopg":
        return "UnicodeError: encoding with 'idna' codec failed"
    return f'could not translate host name "{BAD_NAME}" to address'


def connector(alias: str, hosts: list[Host], target: str = "read-write") -> Connector:
    return Connector(
        alias=alias,
        sender=DatabaseWrapper,
        driver=get_driver(),
        hosts=hosts,
        target_session_attrs=target,
        policy=POLICY,
    )


def node_host(node: Any) -> Host:
    return Host("127.0.0.1", node.port)


@pytest.fixture
def thread_errors() -> Iterator[list[threading.ExceptHookArgs]]:
    """Exceptions that ended a thread (a watcher that crashed)."""
    caught: list[threading.ExceptHookArgs] = []
    previous = threading.excepthook
    threading.excepthook = caught.append
    yield caught
    threading.excepthook = previous


@pytest.fixture
def failed_attempts() -> Iterator[list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []

    def receive(**kwargs: Any) -> None:
        sent.append(kwargs)

    signals.host_attempt_failed.connect(receive, weak=False)
    yield sent
    signals.host_attempt_failed.disconnect(receive)


APP_NAME = "unexpected-failures-test"


def app_params(make_alias) -> dict[str, Any]:
    """The connection parameters of a lab alias, named so that its sessions can be told."""
    params = connections[make_alias()].get_connection_params()
    return {**params, "application_name": APP_NAME}


def sessions(node: Any) -> int:
    """Sessions opened to the app database on ``node`` so far (PostgreSQL 14+)."""
    return node.scalar("SELECT sessions FROM pg_stat_database WHERE datname = %s", [APP_DATABASE])


def open_sessions(node: Any, older_than: float = 0.0) -> int:
    """This test's sessions now open on ``node``, opened at least ``older_than`` s ago."""
    return node.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
        "AND backend_start < now() - make_interval(secs => %s)",
        [APP_NAME, older_than],
    )


def test_the_name_fails_one_attempt_and_the_next_host_serves(
    cluster: Cluster, make_alias, failed_attempts
) -> None:
    params = app_params(make_alias)
    primary = node_host(cluster.primary)
    landing = connector("bad-name", [BAD, primary]).connect(params)
    try:
        assert landing.host == primary
    finally:
        get_driver().close_quietly(landing.connection)
    [failure] = [f for f in failed_attempts if f["host"] == BAD_NAME]
    assert failure["reason"].startswith(reason_for_the_bad_name())
    # Backed off like any host that did not answer: tried last from now on.
    assert host_status.state(BAD) is HostState.DOWN


def test_threads_waiting_with_the_name_in_the_list_do_not_storm_the_servers(
    cluster: Cluster, make_alias, thread_errors
) -> None:
    """Threads that wait for a server leave the search to the watcher, whose list
    holds the name too: it backs the name off, and keeps one connection per server."""
    params = app_params(make_alias)
    standby, primary = cluster.standbys[0], cluster.primary
    shared = connector("bad-name", [node_host(standby), BAD, node_host(primary)])
    before = sessions(primary)
    results: list[Landing | BaseException] = []

    def connect() -> None:
        try:
            results.append(shared.connect(params))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=connect) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert [type(r) for r in results] == [Landing] * 8, results
        assert {r.host for r in results if isinstance(r, Landing)} == {node_host(primary)}
    finally:
        for result in results:
            if isinstance(result, Landing):
                get_driver().close_quietly(result.connection)
    assert thread_errors == []
    # Each thread's connection, and at most a few of the watcher's: nowhere near a
    # connection per watcher restart (hundreds a second when the watcher crashed).
    wait_for(
        lambda: open_sessions(primary) == 0, timeout=10, what="the sessions to the primary to end"
    )
    # Ended sessions have reported themselves: one per thread, and the watcher's few,
    # nowhere near one per watcher restart (hundreds a second when the watcher crashed).
    opened = sessions(primary) - before
    assert opened <= 8 + 8


def test_the_watcher_backs_the_name_off_until_a_server_suits(
    cluster: Cluster, make_alias, thread_errors
) -> None:
    params = app_params(make_alias)
    standby = cluster.standbys[0]
    waiting = connector("bad-name", [BAD, node_host(standby)])
    results: list[Landing | BaseException] = []

    def connect() -> None:
        try:
            results.append(waiting.connect(params))
        except BaseException as exc:
            results.append(exc)

    thread = threading.Thread(target=connect)
    thread.start()
    # The watcher holds a connection to the standby (the walk's own is closed at once;
    # the held one is replaced every backoff_max, 0.25 s, as a moving address would need)
    # and tries the name with backoff, round after round.
    wait_for(
        lambda: open_sessions(standby, older_than=0.1),
        timeout=10,
        what="the watcher's connection to the standby",
    )
    cluster.promote(standby)
    thread.join(30)
    [result] = results
    try:
        assert isinstance(result, Landing), result
        assert result.host == node_host(standby)
    finally:
        if isinstance(result, Landing):
            get_driver().close_quietly(result.connection)
    assert thread_errors == []


@needs_pool
def test_a_pool_with_the_name_first_serves_from_the_next_host(cluster: Cluster, make_alias) -> None:
    from django_pg_failover.pool import FailoverPool

    params = app_params(make_alias)
    primary = node_host(cluster.primary)
    pool = FailoverPool(
        connector=connector("bad-name", [BAD, primary]),
        health_checks=False,
        kwargs={**params, "autocommit": True},
        open=False,
        min_size=2,
        max_size=2,
    )
    pool.open()
    try:
        connection = pool.getconn(timeout=10)
        try:
            assert int(connection.info.port) == primary.port
        finally:
            pool.putconn(connection)
    finally:
        pool.close()


def test_pg_hosts_reports_the_name_as_that_hosts_failure(cluster: Cluster, make_alias) -> None:
    params = app_params(make_alias)
    primary = node_host(cluster.primary)
    bad, good = report_hosts([BAD, primary], params, 2, get_driver())
    assert not bad.reachable
    assert bad.error.startswith(reason_for_the_bad_name())
    assert good.reachable
    assert good.role == "primary"


def test_pg_hosts_refuses_the_setting_without_a_traceback(cluster: Cluster, make_alias) -> None:
    alias = make_alias(HOST=[BAD_NAME, *cluster.hosts()])
    with pytest.raises(CommandError) as caught:
        call_command("pg_hosts", database=alias)
    assert str(caught.value) == (
        f"DATABASES[{alias!r}]['HOST'][0]: '{BAD_NAME}' is not a valid host name: it has an "
        "empty label (a dot first, or two in a row)"
    )


def test_the_watcher_takes_an_unexpected_error_as_a_failure() -> None:
    """Whatever an attempt raises, the watcher backs that host off and goes on."""
    bad = connector("bad-name", [BAD])
    hosts = HostList(
        alias=bad.alias,
        hosts=bad.hosts,
        target_session_attrs=bad.target_session_attrs,
        policy=bad.policy,
        attempt=lambda host: bad.attempt(host, {}),
        ask=lambda connection, host: Role.PRIMARY,
        close=bad.driver.close_quietly,
    )
    watcher = Watcher((), hosts)
    watch = _HostWatch(BAD)
    future: Future = Future()
    future.set_exception(UnicodeError("label empty or too long"))
    watcher._collect(watch, future)
    assert (watch.connection, watch.role, watch.failures) == (None, None, 1)
    assert watch.next_attempt > 0


def test_an_unexpected_error_is_unreachable() -> None:
    result = connector("bad-name", [BAD]).attempt(BAD, {"dbname": "app", "connect_timeout": 2})
    assert result.verdict is Verdict.UNREACHABLE
    assert result.reason.startswith(reason_for_the_bad_name())
