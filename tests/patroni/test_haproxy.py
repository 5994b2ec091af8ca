"""Through HAProxy in front of Patroni: HOST is the proxy's one address.

HAProxy routes to the member whose REST ``/primary`` answers 200, checked every
500 ms (down after 2 failed checks, up after 1 good one), and cuts the
sessions of a member it marks down (lab/haproxy.py). Patroni's answer lags
behind the server, and while no member is up the proxy accepts a connection
and closes it at once: the backend judges whatever it reaches, waits through
the failover as it does with a host list (``retry_timeout``), and drops a
session on a demoted server at its first error. Django's own backend, set up
at its best (``target_session_attrs=read-write``), fails meanwhile.

Each test runs request-like writes on both backends through the proxy, with
fresh, persistent (health-checked) and, on psycopg 3, pooled connections. The
bounds asserted: no unit of this backend that started after the fault fails,
at most one per loop in flight at the fault, its first write within 3 s of the
proxy routing to the new leader, none lost (synchronous mode for the killed
leader, a planned switchover loses nothing anyway), none run twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from django_pg_failover.lab import Member, PatroniCluster
from django_pg_failover.lab.haproxy import HAProxy
from django_pg_failover.lab.system import wait_for
from tests.load import RequestLoop, acknowledged_keys, report, running, wait_for_writes
from tests.markers import needs_pool

pytestmark = pytest.mark.timeout(240)

# From HAProxy routing to the new leader to the first write of each loop of this
# backend: a check interval (0.5 s) and backoff_max (0.25 s), with room for load.
FIRST_WRITE_BOUND = 3.0


def keys_on(member: Member, keys: list[str]) -> list[str]:
    rows = member.pg.query(
        "SELECT key FROM shop_order WHERE key = ANY(%s)", [list(keys)], dbname="app"
    )
    return [row[0] for row in rows]


def proxied_loops(request_loops: Callable[..., RequestLoop], proxy: HAProxy) -> list[RequestLoop]:
    """Ours and stock, fresh and persistent connections; ours pooled where Django can."""
    loops = [
        request_loops(stock=stock, persistent=persistent, proxy=proxy)
        for stock in (False, True)
        for persistent in (False, True)
    ]
    if not needs_pool.args[0]:
        loops.append(request_loops(proxy=proxy, pool=True))
    return loops


def routed_to(proxy: HAProxy, member: Member) -> float:
    """Wait until HAProxy routes to ``member`` alone; when it did."""
    proxy.wait_routes_to({member.name}, timeout=30)
    return time.monotonic()


def check(
    loops: list[RequestLoop], fault_at: float, routed_at: float, new: Member
) -> dict[str, float]:
    """The bounds of the module's docstring; the first write of each loop after the route."""
    first_write = {}
    for loop in loops:
        first = loop.first_write_after(routed_at, new.port)
        assert first is not None, loop.label
        first_write[loop.label] = round(first - routed_at, 3)
    for loop in loops:
        if loop.label.startswith("ours"):
            assert loop.failed_after(fault_at) == [], loop.label
            assert len(loop.failed_in_flight(fault_at)) <= 1, loop.label
            assert first_write[loop.label] < FIRST_WRITE_BOUND, loop.label
    stock = [loop for loop in loops if loop.label.startswith("stock")]
    assert sum(len(loop.failed_after(fault_at)) for loop in stock) > 0  # the fault was felt
    acknowledged = acknowledged_keys(loops)
    assert sorted(keys_on(new, acknowledged)) == sorted(acknowledged)
    assert all(loop.duplicates == 0 for loop in loops)
    return first_write


def test_killed_leader_through_haproxy(
    patroni_lab: PatroniCluster, haproxy: HAProxy, request_loops
) -> None:
    """kill -9 of the leader's agent and PostgreSQL: Patroni fails over after its ttl,
    HAProxy follows its checks; synchronous mode, so that no acknowledged write is lost."""
    patroni_lab.set_synchronous(True)
    haproxy.wait_routes_to({patroni_lab.leader().name})
    loops = proxied_loops(request_loops, haproxy)
    with patroni_lab.watch() as watch, running(loops):
        wait_for_writes(loops, since=0)
        old = patroni_lab.kill_node()
        fault_at = time.monotonic()
        new = patroni_lab.wait_leader(other_than=old, timeout=patroni_lab.ttl * 3)
        routed_at = routed_to(haproxy, new)
        wait_for_writes(loops, since=time.monotonic(), port=new.port)
    change = watch.new_leader_after(fault_at, old.name)
    assert change is not None
    assert change.writable is not None
    first_write = check(loops, fault_at, routed_at, new)
    report(
        f"through HAProxy: leader node {old.name} killed, {new.name} promoted",
        loops,
        fault_at,
        patroni_failover=f"{change.writable - fault_at:.2f}s",
        haproxy_routed_after_new_leader_took_writes=f"{routed_at - change.writable:.2f}s",
        first_write_after_haproxy_routed=first_write,
    )
    assert patroni_lab.ttl - patroni_lab.loop_wait - 1 <= change.writable - fault_at


def test_switchover_through_haproxy(
    patroni_lab: PatroniCluster, haproxy: HAProxy, request_loops
) -> None:
    """Patroni's switchover: the old leader restarts as a replica (its ``/primary`` may
    say 200 for a moment more); HAProxy moves to the new leader."""
    loops = proxied_loops(request_loops, haproxy)
    with running(loops), ThreadPoolExecutor(1) as pool:
        wait_for_writes(loops, since=0)
        old = patroni_lab.leader()
        asked_at = time.monotonic()
        switched = pool.submit(patroni_lab.switchover)
        wait_for(lambda: not old.is_primary(), 30, f"{old.name} to step down", interval=0.005)
        fault_at = time.monotonic()
        new = switched.result(60)
        routed_at = routed_to(haproxy, new)
        wait_for_writes(loops, since=time.monotonic(), port=new.port)
    first_write = check(loops, fault_at, routed_at, new)
    report(
        f"through HAProxy: switchover {old.name} -> {new.name}",
        loops,
        fault_at,
        old_leader_stepped_down_after=f"{fault_at - asked_at:.2f}s",
        haproxy_routed_after_step_down=f"{routed_at - fault_at:.2f}s",
        first_write_after_haproxy_routed=first_write,
    )
