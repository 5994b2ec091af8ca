"""An idle connection whose server said goodbye is never used; one that got a notification
or a notice is kept. On real servers, with both drivers, and Django's pool on psycopg 3.

A server ending a session sends its client a last message (an error such as FATAL
57P01 ``terminating connection due to unexpected postmaster exit``, or the
warning of an immediate shutdown) and closes the connection. libpq takes that
message in as a notice when the connection is idle, and a read that returns data
does not look for the end of the stream behind it: the single read of the check
(which psycopg 3 did not even parse) left such a connection looking alive, and
it was handed out.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Iterator
from contextlib import closing

import pytest
from django.db import connections

from django_pg_failover import signals
from django_pg_failover.drivers import get_driver
from django_pg_failover.lab import Cluster, Relay
from django_pg_failover.lab.system import wait_for
from django_pg_failover.losing.liveness import idle_connection_failure
from tests.markers import needs_pool

from .units import create, in_request

pytestmark = pytest.mark.timeout(120)

driver = get_driver()


def readable(connection, timeout: float) -> bool:
    poller = select.poll()
    poller.register(driver.socket_fd(connection), select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def wait_readable(connection, timeout: float = 10) -> None:
    assert readable(connection, timeout), "nothing arrived on the idle connection"


def session_gone(cluster: Cluster, pid: int) -> bool:
    return not cluster.primary.query("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid])


def terminate(cluster: Cluster, connection) -> int:
    """End the connection's session the way an administrator does (FATAL 57P01)."""
    pid = connection.info.backend_pid
    assert cluster.primary.scalar("SELECT pg_terminate_backend(%s)", [pid])
    return pid


@pytest.fixture
def idle(cluster: Cluster) -> Iterator:
    """A connection to the primary, straight from the driver, that ran a query and sits idle."""
    with closing(driver.connect(cluster.primary.dsn())) as connection:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        yield connection


@pytest.mark.parametrize("pool", [False, pytest.param(True, marks=needs_pool)], ids=["", "pool"])
def test_connections_to_servers_that_died_are_not_used(
    cluster: Cluster, make_alias, pool: bool
) -> None:
    """Every postmaster killed -9 (their sessions say goodbye and close), one restarted:
    the next requests are served, on a new connection."""
    if pool:
        alias = make_alias(OPTIONS={"pool": {"min_size": 2, "max_size": 4}})
    else:
        alias = make_alias(CONN_MAX_AGE=600)
    in_request(lambda: create(alias))
    if pool:
        connections[alias].pool.wait(timeout=10)  # idle connections in the pool
    lost: list[dict] = []

    def on_lost(**kwargs) -> None:
        lost.append(kwargs)

    primary = cluster.primary
    for node in cluster.nodes:
        cluster.kill_postmaster(node)  # returns once every session has ended
    cluster.start(primary)
    signals.connection_lost.connect(on_lost)
    try:
        for _ in range(3):
            in_request(lambda: create(alias))
    finally:
        signals.connection_lost.disconnect(on_lost)
    assert lost, "the dead connection was not noticed"
    assert {event["port"] for event in lost} == {primary.port}


@pytest.mark.parametrize(
    ("ending", "goodbye"),
    [
        ("terminate", "terminating connection due to administrator command"),  # FATAL
        ("immediate_shutdown", "terminating connection due to immediate shutdown command"),
    ],
)
def test_a_goodbye_is_seen_before_the_end_of_the_stream(
    cluster: Cluster, ending: str, goodbye: str
) -> None:
    """The server's goodbye is in the socket, the end of the stream not yet: a relay
    holds it back, so the check meets the instant between the two every time.

    ``pg_terminate_backend()`` says goodbye with a FATAL error, an immediate
    shutdown with a WARNING (both 57P01). psycopg 3 hands the message over with
    its severity (never translated) and SQLSTATE: the check says gone at once,
    without the end of the stream. psycopg2 passes on a notice's text only (its
    severity in the server's language): the check then waits a moment for the
    end of the stream, which comes within milliseconds of a goodbye (2 to 7 ms
    here); the relay lets it through 10 ms after the check starts.

    A server sends the goodbye of an immediate shutdown from a signal handler, at
    its best: here about one session in eight ends without it. Such a session
    is no case for this test, and another is tried (five at most).
    """
    for _ in range(5):
        with (
            Relay(cluster.primary.port, hold_close=True) as relay,
            closing(driver.connect({**cluster.primary.dsn(), "port": relay.port})) as connection,
        ):
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            if ending == "terminate":
                terminate(cluster, connection)
            else:
                cluster.stop(cluster.primary, mode="immediate")
            assert relay.server_closed.wait(10)  # the session has ended...
            if ending != "terminate" and not readable(connection, 1.0):
                cluster.start(cluster.primary)  # ended without a goodbye
                continue
            wait_readable(connection)  # ...and its goodbye is here, without the end
            release = threading.Timer(0.01, relay.release_close)
            if driver.name == "psycopg2":
                release.start()
            failure = idle_connection_failure(driver, connection)
            release.cancel()
            assert failure is not None
            if driver.name == "psycopg":
                assert driver.sqlstate(failure) == "57P01"
                assert str(failure) == goodbye
            return
    pytest.fail("no session ended with a goodbye")


def test_a_goodbye_and_the_end_of_the_stream_are_seen_in_one_check(cluster: Cluster, idle) -> None:
    """Both wait in the socket (the session has ended): one read takes the goodbye only."""
    pid = terminate(cluster, idle)
    wait_for(lambda: session_gone(cluster, pid), 10, "the session to end")
    wait_readable(idle)
    assert idle_connection_failure(driver, idle) is not None


@pytest.mark.parametrize("notices", [False, True], ids=["notification", "with_notices"])
def test_a_notification_or_a_notice_on_an_idle_connection_is_no_goodbye(
    cluster: Cluster, idle, notices: bool
) -> None:
    """LISTEN on the idle connection, NOTIFY from another: the check keeps the connection,
    and the notification still reaches the application. With ``trace_notify`` the
    server also sends notices (DEBUG) around it."""
    received: list[str] = []
    if driver.name == "psycopg":
        idle.add_notify_handler(lambda notify: received.append(notify.payload))
    with idle.cursor() as cursor:
        if notices:
            cursor.execute("SET client_min_messages = debug1")
            cursor.execute("SET trace_notify = on")
        cursor.execute("LISTEN liveness")
    cluster.primary.query("NOTIFY liveness, 'hello'")
    wait_readable(idle)
    started = time.monotonic()
    assert idle_connection_failure(driver, idle) is None
    elapsed = time.monotonic() - started
    with idle.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    if driver.name == "psycopg":
        assert elapsed < 0.05  # no waiting: psycopg 3 tells a notice from a goodbye
    else:
        received = [notify.payload for notify in idle.notifies]
        if notices:  # passed on to the driver's list, as without the check
            assert any("ProcessIncomingNotify" in notice for notice in idle.notices)
    assert received == ["hello"]
