"""Connecting to a host list on real servers: order, roles, retries and giving up."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import OperationalError, connections

from django_pg_failover.lab import Cluster
from django_pg_failover.lab.cluster import free_port

pytestmark = pytest.mark.timeout(120)


def connect(alias: str) -> float:
    started = time.monotonic()
    connections[alias].ensure_connection()
    return time.monotonic() - started


def port_of(alias: str) -> int:
    return int(connections[alias].connection.info.port)


def test_first_host_refused_connects_to_the_next(cluster: Cluster, make_alias) -> None:
    alias = make_alias(HOST=[f"127.0.0.1:{free_port()}", *cluster.hosts()])
    assert connect(alias) < 1.0
    assert port_of(alias) == cluster.primary.port


def test_standby_listed_first_lands_on_the_primary(cluster: Cluster, make_alias) -> None:
    alias = make_alias(HOST=[f"127.0.0.1:{n.port}" for n in [*cluster.standbys, cluster.primary]])
    connect(alias)
    assert port_of(alias) == cluster.primary.port
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        assert cursor.fetchone() == (False,)


def test_hung_first_host_is_overtaken_after_attempt_delay(cluster: Cluster, make_alias) -> None:
    hung = cluster.hang(cluster.standbys[0])
    alias = make_alias(
        HOST=[f"127.0.0.1:{hung.port}", f"127.0.0.1:{cluster.primary.port}"],
        OPTIONS={"connect_timeout": 2, "failover": {"host_recheck": 0, "attempt_delay": 0.5}},
    )
    # Waiting connect_timeout (2 s) for the hung host would take longer.
    assert 0.5 <= connect(alias) < 1.5
    assert port_of(alias) == cluster.primary.port


def test_socket_that_never_answers_is_overtaken(cluster: Cluster, make_alias, pg_blackhole) -> None:
    alias = make_alias(
        HOST=[pg_blackhole.address, *cluster.hosts()],
        OPTIONS={"connect_timeout": 2, "failover": {"host_recheck": 0, "attempt_delay": 0.5}},
    )
    assert 0.5 <= connect(alias) < 1.5
    assert port_of(alias) == cluster.primary.port


def test_unix_socket_and_ipv6_entries(cluster: Cluster, make_alias) -> None:
    sockets = str(cluster.root / "sockets")
    standby, primary = cluster.standbys[0], cluster.primary
    alias = make_alias(HOST=[{"host": sockets, "port": standby.port}, f"[::1]:{primary.port}"])
    connect(alias)
    assert connections[alias].connection.info.host == "::1"
    assert port_of(alias) == primary.port


def test_waits_for_a_primary_to_appear(cluster: Cluster, make_alias, failover_log) -> None:
    alias = make_alias(OPTIONS={"failover": {"retry_timeout": 15, "backoff_max": 0.2}})
    cluster.crash(cluster.primary)
    promoter = threading.Timer(1.5, cluster.promote)
    promoter.start()
    try:
        elapsed = connect(alias)
    finally:
        promoter.join()
    assert elapsed >= 1.4
    assert port_of(alias) == cluster.primary.port
    waits = [r for r in failover_log.records if "waiting for a suitable" in r.getMessage()]
    assert len(waits) == 1  # one walk over the hosts, then the watcher looks for it
    assert "Connection refused" in waits[0].getMessage()
    assert "session is read-only" in waits[0].getMessage()
    woken = [r for r in failover_log.records if "waking the waiting" in r.getMessage()]
    assert f":{cluster.primary.port} answers as a primary" in woken[0].getMessage()
    connected = [r for r in failover_log.records if "connected to" in r.getMessage()]
    assert f":{cluster.primary.port} (primary) after 2 attempt(s)" in connected[-1].getMessage()


def test_gives_up_after_retry_timeout_listing_each_host(cluster: Cluster, make_alias) -> None:
    alias = make_alias(OPTIONS={"failover": {"retry_timeout": 1.0}})
    down = cluster.crash(cluster.primary)
    started = time.monotonic()
    with pytest.raises(OperationalError) as excinfo:
        connections[alias].ensure_connection()
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 3
    message = str(excinfo.value)
    first, *hosts = message.splitlines()
    assert first.startswith(
        f"could not connect to database alias '{alias}' (target_session_attrs=read-write) after"
    )
    assert first.endswith("retry_timeout reached:")
    assert sorted(hosts) == sorted(
        [
            f"  127.0.0.1:{down.port}: Connection refused",
            *(f"  127.0.0.1:{n.port}: session is read-only" for n in cluster.standbys),
        ]
    )
    assert isinstance(excinfo.value.__cause__, connections[alias].driver.module.OperationalError)
    assert cluster.password not in message
    assert connections[alias].connection is None


def test_retry_timeout_zero_makes_one_pass(cluster: Cluster, make_alias, failover_log) -> None:
    alias = make_alias(OPTIONS={"failover": {"retry_timeout": 0}})
    cluster.crash(cluster.primary)
    with pytest.raises(OperationalError, match=r"after 1 attempt\(s\)"):
        connect(alias)
    assert not [r for r in failover_log.records if "waiting for a suitable" in r.getMessage()]


def test_wrong_password_is_not_retried(cluster: Cluster, make_alias) -> None:
    alias = make_alias(PASSWORD="wrong-Pa55word", OPTIONS={"failover": {"retry_timeout": 10}})
    started = time.monotonic()
    with pytest.raises(OperationalError) as excinfo:
        connections[alias].ensure_connection()
    assert time.monotonic() - started < 2
    message = str(excinfo.value)
    assert "after 1 attempt(s)" in message
    assert "not retried: waiting will not fix it" in message
    assert 'password authentication failed for user "app"' in message
    assert "wrong-Pa55word" not in message


def test_missing_database_is_not_retried(cluster: Cluster, make_alias) -> None:
    alias = make_alias(NAME="no_such_db", OPTIONS={"failover": {"retry_timeout": 10}})
    started = time.monotonic()
    with pytest.raises(OperationalError, match='database "no_such_db" does not exist'):
        connections[alias].ensure_connection()
    assert time.monotonic() - started < 2


def test_connection_established_is_logged_with_host_and_role(
    cluster: Cluster, make_alias, failover_log
) -> None:
    alias = make_alias(HOST=[f"127.0.0.1:{n.port}" for n in [*cluster.standbys, cluster.primary]])
    connect(alias)
    messages = [r.getMessage() for r in failover_log.records]
    assert any(
        f"database alias '{alias}': connected to 127.0.0.1:{cluster.primary.port} (primary)" in m
        for m in messages
    )
