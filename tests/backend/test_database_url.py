"""DATABASE_URL on real servers: config() with a dead host first reaches the primary."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from django.db import connections

import django_pg_failover
from django_pg_failover.connecting.memory import HostState, host_status
from django_pg_failover.lab import Cluster
from django_pg_failover.lab.cluster import free_port, ipv6_loopback_available
from django_pg_failover.settings.hosts import Host

pytestmark = pytest.mark.timeout(120)


def server(alias: str) -> tuple[int, bool]:
    """(port, in recovery) of the server the alias reached; works over a socket too."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT current_setting('port')::int, pg_is_in_recovery()")
        return cursor.fetchone()


def test_url_with_a_dead_host_first_reaches_the_primary(
    cluster: Cluster, make_alias, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = free_port()  # a closed loopback port: connection refused
    standby = cluster.standbys[0]
    loopback6 = "[::1]" if ipv6_loopback_available() else "127.0.0.1"
    sockets = quote(str(cluster.root / "sockets"), safe="")
    # Every host form at once: IPv4 (dead), IPv6 (a standby), a socket folder (the primary).
    url = (
        f"postgresql://app:{quote(cluster.password, safe='')}@127.0.0.1:{dead},"
        f"{loopback6}:{standby.port},{sockets}:{cluster.primary.port}/app"
        "?connect_timeout=2&application_name=from-url&retry_timeout=15&backoff_max=0.25"
    )
    monkeypatch.setenv("DATABASE_URL", url)
    entry = django_pg_failover.config(conn_health_checks=True)
    assert entry["OPTIONS"]["failover"] == {"retry_timeout": 15.0, "backoff_max": 0.25}
    alias = make_alias(**entry)

    assert server(alias) == (cluster.primary.port, False)
    wrapper = connections[alias]
    assert wrapper.server == Host(str(cluster.root / "sockets"), cluster.primary.port)
    assert wrapper.settings_dict["CONN_HEALTH_CHECKS"] is True
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT current_setting('application_name')")
        assert cursor.fetchone() == ("from-url",)
    # Tried in the URL's order and remembered, as with a HOST list.
    states = {host: record.state for host, record in host_status.snapshot().items()}
    loopback = "::1" if loopback6 == "[::1]" else "127.0.0.1"
    assert states == {
        Host("127.0.0.1", dead): HostState.DOWN,
        Host(loopback, standby.port): HostState.STANDBY,
        Host(str(cluster.root / "sockets"), cluster.primary.port): HostState.PRIMARY,
    }


def test_url_follows_a_failover(cluster: Cluster, make_alias) -> None:
    hosts = [f"127.0.0.1:{free_port()}", *cluster.hosts()]
    alias = make_alias(**django_pg_failover.config(url=cluster.database_url(hosts)))
    assert server(alias) == (cluster.primary.port, False)
    connections[alias].close()

    report = cluster.failover(rejoin=False)
    new_primary = cluster.node(report.new_primary)
    assert server(alias) == (new_primary.port, False)
