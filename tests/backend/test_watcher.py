"""Failover at the physical limit: hung hosts overtaken, and one watcher per process while
connections wait for a primary. The timing figures come from ``make bench``; these tests
check what must hold whatever the machine's speed."""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
import uuid

import pytest
from django.db import connections

from django_pg_failover.lab import Cluster
from django_pg_failover.lab.cluster import free_port
from django_pg_failover.lab.system import wait_for

from .units import port_of

pytestmark = pytest.mark.timeout(120)


def entry(node) -> str:
    return f"127.0.0.1:{node.port}"


def sessions_named(node, name: str) -> int:
    return node.scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [name])


def sessions_opened(node) -> int:
    """Sessions the server has established so far (PostgreSQL 14+, flushed at their exit)."""
    return node.scalar("SELECT sum(sessions) FROM pg_stat_database WHERE datname = 'app'")


def watcher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pg-failover-watcher" and t.is_alive()]


@pytest.mark.parametrize(
    ("target", "lands_on"), [("read-write", "primary"), ("any", "standby"), ("standby", "standby")]
)
def test_a_parallel_connect_lands_on_the_preferred_suitable_server_and_leaks_nothing(
    cluster: Cluster, make_alias, target: str, lands_on: str
) -> None:
    hung, standby = cluster.standbys
    cluster.hang(hung)
    name = f"walk-{uuid.uuid4().hex[:8]}"
    alias = make_alias(
        HOST=[entry(hung), f"127.0.0.1:{free_port()}", entry(standby), entry(cluster.primary)],
        OPTIONS={
            "target_session_attrs": target,
            "application_name": name,
            "connect_timeout": 2,
            "failover": {"attempt_delay": 0.1, "host_recheck": 0},
        },
    )
    connections[alias].ensure_connection()
    expected = cluster.primary if lands_on == "primary" else standby
    assert port_of(alias) == expected.port
    # Every attempt that lost the race is closed: only the winner stays.
    other = standby if expected is cluster.primary else cluster.primary
    wait_for(
        lambda: sessions_named(expected, name) == 1 and sessions_named(other, name) == 0,
        10,
        "the losing attempts to close",
    )


def test_one_watcher_wakes_every_waiter_at_a_bounded_cost(cluster: Cluster, make_alias) -> None:
    alias = make_alias(OPTIONS={"failover": {"retry_timeout": 20}})
    standbys = cluster.standbys
    before = {node.name: sessions_opened(node) for node in standbys}
    cluster.crash(cluster.primary)
    results: dict[int, int] = {}
    errors: list[BaseException] = []

    def waiter(n: int) -> None:
        try:
            connections[alias].ensure_connection()
            results[n] = port_of(alias)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = []
    for n in range(20):  # requests arriving all through the outage
        threads.append(threading.Thread(target=waiter, args=(n,)))
        threads[-1].start()
        time.sleep(0.075)
    new = cluster.promote()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert set(results.values()) == {new.port}
    assert len(results) == 20
    wait_for(lambda: not watcher_threads(), 10, "the watcher to stop once nobody waits")
    opened = {node.name: sessions_opened(node) - before[node.name] for node in standbys}
    # The 20 connections to the promoted standby aside: without the watcher, 20
    # threads retrying with backoff for 1.5 s opened about 200 sessions on the
    # standbys; with it, the walks of the first arrivals and the watcher's own.
    waiting_cost = sum(opened.values()) - 20
    assert waiting_cost <= 20, opened


def test_the_watcher_never_wakes_waiters_for_a_server_the_target_rejects(
    cluster: Cluster, make_alias
) -> None:
    """A fenced, read-only primary answers: read-write waiters keep waiting for the real one."""
    alias = make_alias(OPTIONS={"failover": {"retry_timeout": 20}})
    old = cluster.make_read_only(cluster.primary)
    connections[alias].close()
    landed: list[int] = []

    def wait_for_a_primary() -> None:
        connections[alias].ensure_connection()
        landed.append(port_of(alias))
        connections.close_all()

    waiter = threading.Thread(target=wait_for_a_primary)
    waiter.start()
    time.sleep(1.0)  # the watcher has asked the fenced primary many times by now
    assert landed == []
    new = cluster.promote()
    waiter.join(30)
    assert landed == [new.port] != [old.port]


def sockets_to(port: int) -> set[str]:
    """This process's sockets connected to ``port`` on loopback (by inode)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
            if not link.startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(int(fd))) as sock:
                if sock.getpeername()[1] == port:
                    found.add(link)
        except (OSError, ValueError, IndexError, TypeError):
            continue  # gone meanwhile, not connected, or not an internet socket
    return found


def test_attempts_that_timed_out_leave_no_socket_open(cluster: Cluster, make_alias) -> None:
    """A failure is remembered (to name every host in an error) without the frames it was
    raised through: with psycopg 3 they held the connect generator and its open socket."""
    hung, standby = cluster.standbys
    alias = make_alias(
        HOST=[entry(hung), entry(cluster.primary), entry(standby)],
        OPTIONS={"connect_timeout": 2, "failover": {"retry_timeout": 20, "backoff_max": 0.25}},
    )
    before = sockets_to(hung.port)  # earlier tests' connections to that server, if any
    cluster.hang(hung, include_sessions=False)
    cluster.crash(cluster.primary)

    def promote_later() -> None:
        # The watcher's attempts at the hung host time out (connect_timeout) first.
        time.sleep(3.0)
        cluster.promote(standby)

    promoter = threading.Thread(target=promote_later)
    promoter.start()
    connections[alias].ensure_connection()
    promoter.join()
    assert port_of(alias) == standby.port
    assert connections[alias].connector.last_failures  # remembered, for the next error
    # Attempts still in flight end within connect_timeout; then nothing stays open.
    wait_for(
        lambda: gc.collect() >= 0 and not sockets_to(hung.port) - before,
        8,
        "no socket opened to the hung host to stay open",
    )
