"""The host status memory and read replicas, on real servers with real hung hosts."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from django.db import OperationalError, connections
from django.test.utils import override_settings

from django_pg_failover.connecting.memory import HostState, host_status
from django_pg_failover.lab import Cluster
from django_pg_failover.settings.hosts import Host
from shop.models import Order
from testproject.routers import PrimaryReplicaRouter

pytestmark = pytest.mark.timeout(120)


def new_connection(alias: str) -> tuple[float, int]:
    """Seconds to open a fresh connection, and the port it reached."""
    connections[alias].close()
    started = time.monotonic()
    connections[alias].ensure_connection()
    return time.monotonic() - started, int(connections[alias].connection.info.port)


def entry(node) -> str:
    return f"127.0.0.1:{node.port}"


# A hung host costs a connect attempt_delay (it is overtaken), not connect_timeout;
# a host the memory knows is down costs nothing: it is tried last.
SLOW = {"connect_timeout": 2, "failover": {"attempt_delay": 0.5}}
OVERTAKEN = 0.5  # a connect that waited for the hung host first
DIRECT = 0.4  # one that did not


def ordered_ports(alias: str) -> list[int]:
    return [h.port for h in connections[alias].connector.ordered_hosts()]


def test_hung_first_host_is_skipped_by_later_connections(cluster: Cluster, make_alias) -> None:
    hung = cluster.hang(cluster.standbys[0])
    alias = make_alias(
        HOST=[entry(hung), entry(cluster.primary), entry(cluster.standbys[1])], OPTIONS=SLOW
    )
    first, port = new_connection(alias)
    assert first >= OVERTAKEN
    assert port == cluster.primary.port
    for _ in range(5):
        later, port = new_connection(alias)
        assert later < DIRECT
        assert port == cluster.primary.port
    order = ordered_ports(alias)
    assert order[0] == cluster.primary.port
    assert order[-1] == hung.port


def test_memory_expires_after_host_recheck(cluster: Cluster, make_alias) -> None:
    hung = cluster.hang(cluster.standbys[0])
    alias = make_alias(
        HOST=[entry(hung), entry(cluster.primary)],
        OPTIONS={**SLOW, "failover": {"attempt_delay": 0.5, "host_recheck": 3.0}},
    )
    assert new_connection(alias)[0] >= OVERTAKEN
    assert new_connection(alias)[0] < DIRECT
    # The memory is time-based: let it expire (the hung host's own attempt timed
    # out after connect_timeout, 2 s, and was remembered 3 s from then).
    wait_until = time.monotonic() + 6
    while host_status.state(Host("127.0.0.1", hung.port)) is not None:
        assert time.monotonic() < wait_until
        time.sleep(0.05)
    assert new_connection(alias)[0] >= OVERTAKEN  # the hung host is tried first again


def test_host_recheck_zero_disables_the_memory(cluster: Cluster, make_alias) -> None:
    hung = cluster.hang(cluster.standbys[0])
    alias = make_alias(
        HOST=[entry(hung), entry(cluster.primary)],
        OPTIONS={**SLOW, "failover": {"attempt_delay": 0.5, "host_recheck": 0}},
    )
    assert new_connection(alias)[0] >= OVERTAKEN
    assert new_connection(alias)[0] >= OVERTAKEN
    assert host_status.snapshot() == {}


def test_when_every_host_looks_bad_every_host_is_still_tried(cluster: Cluster, make_alias) -> None:
    alias = make_alias(OPTIONS={"failover": {"retry_timeout": 0}})
    for node in cluster.nodes:
        cluster.crash(node)
    with pytest.raises(OperationalError):
        connections[alias].ensure_connection()
    states = {h.port: r.state for h, r in host_status.snapshot().items()}
    assert states == {n.port: HostState.DOWN for n in cluster.nodes}
    for node in cluster.nodes:
        cluster.start(node)
    assert new_connection(alias)[1] == cluster.primary.port


def test_a_host_that_fails_mid_session_is_marked_down_at_once(cluster: Cluster, make_alias) -> None:
    alias = make_alias()
    Order.objects.using(alias).count()
    old = cluster.crash(cluster.primary)
    with pytest.raises(OperationalError):
        Order.objects.using(alias).count()
    assert host_status.snapshot()[Host("127.0.0.1", old.port)].state is HostState.DOWN


def test_replica_alias_lands_on_standbys_and_learns_them(cluster: Cluster, make_alias) -> None:
    replica = make_alias(OPTIONS={"target_session_attrs": "prefer-standby"})
    _, port = new_connection(replica)
    standby_ports = {n.port for n in cluster.standbys}
    assert port in standby_ports
    order = ordered_ports(replica)
    assert order[0] == port  # the standby it found comes first now
    assert order[-1] == cluster.primary.port  # skipped by a standby-seeking connection


def test_load_balancing_spreads_over_the_standbys(cluster: Cluster, make_alias) -> None:
    replica = make_alias(
        OPTIONS={"target_session_attrs": "prefer-standby", "load_balance_hosts": "random"}
    )
    landed = Counter(new_connection(replica)[1] for _ in range(40))
    assert set(landed) == {n.port for n in cluster.standbys}
    assert min(landed.values()) >= 5


def test_replica_with_a_hung_standby_uses_the_other_one(cluster: Cluster, make_alias) -> None:
    hung, healthy = cluster.standbys
    cluster.hang(hung)
    replica = make_alias(
        HOST=[entry(hung), entry(healthy), entry(cluster.primary)],
        OPTIONS={"target_session_attrs": "standby", **SLOW},
    )
    elapsed, port = new_connection(replica)
    assert elapsed >= OVERTAKEN
    assert port == healthy.port
    for _ in range(3):
        elapsed, port = new_connection(replica)
        assert elapsed < DIRECT
        assert port == healthy.port


def test_router_recipe_reads_from_standbys_and_falls_back(cluster: Cluster, make_alias) -> None:
    primary_alias = make_alias()
    replica_alias = make_alias(OPTIONS={"target_session_attrs": "prefer-standby"})

    class Router(PrimaryReplicaRouter):
        write_alias, read_alias = primary_alias, replica_alias

    with override_settings(DATABASE_ROUTERS=[Router()]):
        Order.objects.create(key="routed")
        cluster.wait_replayed()
        assert Order.objects.filter(key="routed").exists()
        assert int(connections[replica_alias].connection.info.port) in {
            n.port for n in cluster.standbys
        }
        assert int(connections[primary_alias].connection.info.port) == cluster.primary.port
        # Every standby gone: the same reads fall back to the primary.
        for standby in cluster.standbys:
            cluster.crash(standby)
        connections[replica_alias].close()
        assert Order.objects.filter(key="routed").exists()
        assert int(connections[replica_alias].connection.info.port) == cluster.primary.port


def test_sixteen_threads_connect_while_a_host_hangs(cluster: Cluster, make_alias) -> None:
    hung = cluster.hang(cluster.standbys[0])
    alias = make_alias(
        HOST=[entry(hung), entry(cluster.primary), entry(cluster.standbys[1])], OPTIONS=SLOW
    )
    barrier = threading.Barrier(16)
    results: list[tuple[float, int, int]] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        for _ in range(3):
            elapsed, port = new_connection(alias)
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT inet_server_port()")
                (served_by,) = cursor.fetchone()
            with lock:
                results.append((elapsed, port, served_by))
        connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(16)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)  # no deadlock
    assert len(results) == 48
    assert {(port, served) for _, port, served in results} == {
        (cluster.primary.port, cluster.primary.port)
    }
    # Only connections that started before anyone learned of the hang waited for it.
    slow = [elapsed for elapsed, _, _ in results if elapsed >= OVERTAKEN]
    assert len(slow) <= 16
    assert time.monotonic() - started < 10
