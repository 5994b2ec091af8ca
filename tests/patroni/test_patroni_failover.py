"""Through real Patroni failovers: this backend and Django's own, side by side.

Every fault is real (processes killed or frozen, Patroni's own switchover and
failover), and Patroni alone decides who leads. Each test runs request-like
units in threads on both backends through the fault; a unit counts "after"
the fault only if it started after it, so it cannot have met the fault itself.
Dead-node and frozen-node cases wait out Patroni's ttl (20 s at least), so
they are few and each checks as much as it can.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from django_pg_failover.lab import LeaderChange, Member, PatroniCluster
from django_pg_failover.lab.system import wait_for
from tests.load import RequestLoop, acknowledged_keys, report, running, wait_for_writes

pytestmark = pytest.mark.timeout(240)


def keys_on(member: Member, keys: list[str]) -> list[str]:
    rows = member.pg.query(
        "SELECT key FROM shop_order WHERE key = ANY(%s)", [list(keys)], dbname="app"
    )
    return [row[0] for row in rows]


def four_loops(request_loops: Callable[..., RequestLoop]) -> list[RequestLoop]:
    """Ours and stock, each with and without persistent connections."""
    return [
        request_loops(stock=stock, persistent=persistent)
        for stock in (False, True)
        for persistent in (False, True)
    ]


def ours(loops: list[RequestLoop]) -> list[RequestLoop]:
    return [loop for loop in loops if loop.label.startswith("ours")]


def stock(loops: list[RequestLoop]) -> list[RequestLoop]:
    return [loop for loop in loops if loop.label.startswith("stock")]


def test_killed_postmaster_is_restarted_in_place_and_ours_fails_nothing_after_it(
    patroni_lab: PatroniCluster, request_loops
) -> None:
    loops = [request_loops(), request_loops(stock=True)]
    with patroni_lab.watch() as watch, running(loops):
        wait_for_writes(loops, since=0)
        leader = patroni_lab.leader()
        patroni_lab.kill_postmaster(leader)
        fault_at = time.monotonic()
        patroni_lab.wait_healthy(60)
        back_at = time.monotonic()
        wait_for_writes(loops, since=back_at, port=leader.port)
    report("postmaster killed", loops, fault_at, restarted_in=f"{back_at - fault_at:.2f}s")

    # No failover: Patroni kept the lock and restarted the server in place.
    assert {c.leader for c in watch.changes if c.at > fault_at} <= {leader.name, None}
    assert loops[0].failed_after(fault_at) == []
    assert len(loops[0].failed_in_flight(fault_at)) <= 1
    assert loops[1].failed_after(fault_at)  # Django's own backend gives up at once
    # Crash recovery kept every write either backend was told had committed.
    acknowledged = acknowledged_keys(loops)
    assert sorted(keys_on(leader, acknowledged)) == sorted(acknowledged)


@pytest.mark.parametrize("action", ["switchover", "failover"])
def test_planned_role_change_through_patronis_rest_api(
    patroni_lab: PatroniCluster, request_loops, action: str
) -> None:
    loops = four_loops(request_loops)
    with running(loops), ThreadPoolExecutor(1) as pool:
        wait_for_writes(loops, since=0)
        old = patroni_lab.leader()
        asked_at = time.monotonic()
        changed = pool.submit(getattr(patroni_lab, action))  # returns the new leader
        # The fault is the old leader going away, a moment after Patroni was asked:
        # units that began before may have been cut off on it.
        wait_for(lambda: not old.is_primary(), 30, f"{old.name} to step down", interval=0.005)
        fault_at = time.monotonic()
        new = changed.result(60)
        patroni_lab.wait_healthy(60)
        wait_for_writes(loops, since=time.monotonic(), port=new.port)
    report(
        f"{action} {old.name} -> {new.name}",
        loops,
        fault_at,
        old_leader_stepped_down_after=f"{fault_at - asked_at:.2f}s",
    )

    assert new is not old
    for loop in ours(loops):
        assert loop.failed_after(fault_at) == [], loop.label
        assert len(loop.failed_in_flight(fault_at)) <= 1, loop.label
    assert sum(len(loop.failed_after(fault_at)) for loop in stock(loops)) > 0
    # A planned change loses nothing, even with asynchronous replication.
    acknowledged = acknowledged_keys(loops)
    assert sorted(keys_on(new, acknowledged)) == sorted(acknowledged)
    assert all(loop.duplicates == 0 for loop in loops)


def test_dead_leader_node_synchronous_mode_ours_fails_nothing_loses_nothing(
    patroni_lab: PatroniCluster, request_loops
) -> None:
    """kill -9 of the leader's agent and PostgreSQL: Patroni fails over after the ttl."""
    patroni_lab.set_synchronous(True)
    loops = four_loops(request_loops)
    with patroni_lab.watch() as watch, running(loops):
        wait_for_writes(loops, since=0)
        old = patroni_lab.kill_node()
        fault_at = time.monotonic()
        new = patroni_lab.wait_leader(other_than=old, timeout=patroni_lab.ttl * 3)
        wait_for_writes(loops, since=time.monotonic(), port=new.port)
    change: LeaderChange | None = watch.new_leader_after(fault_at, old.name)
    assert change is not None
    assert change.leader == new.name
    patroni_seconds = change.writable - fault_at
    first_write = {
        loop.label: loop.first_write_after(change.writable, new.port) - change.writable
        for loop in loops
    }
    report(
        f"leader node {old.name} killed, {new.name} promoted",
        loops,
        fault_at,
        patroni_failover=f"{patroni_seconds:.2f}s",
        first_write_after_new_leader={k: round(v, 3) for k, v in first_write.items()},
    )

    # Patroni waited for the leader key to expire: this was a real failover.
    assert patroni_lab.ttl - patroni_lab.loop_wait - 1 <= patroni_seconds <= patroni_lab.ttl * 2
    for loop in ours(loops):
        assert loop.failed_after(fault_at) == [], loop.label
        assert len(loop.failed_in_flight(fault_at)) <= 1, loop.label
    for loop in stock(loops):
        assert loop.failed_after(fault_at), loop.label
    # Synchronous mode: every write either backend acknowledged is on the new
    # leader, and none was run twice (a second insert of a key would fail).
    acknowledged = acknowledged_keys(loops)
    assert sorted(keys_on(new, acknowledged)) == sorted(acknowledged)
    assert all(loop.duplicates == 0 for loop in loops)


@pytest.mark.parametrize("synchronous", [True, False], ids=["synchronous", "asynchronous"])
def test_frozen_leader_measured(
    patroni_lab: PatroniCluster, request_loops, synchronous: bool
) -> None:
    """SIGSTOP of the leader's agent and PostgreSQL, then SIGCONT once another leads.

    Without a watchdog, Patroni cannot fence a frozen leader: when it wakes, it
    takes writes until its agent notices it lost the leader key and demotes it.
    A unit in flight on the frozen leader waits for it (no client-side timeout
    fires while its kernel still acknowledges), so a second set of loops starts
    just after the freeze: all of their units began after the fault.
    """
    if synchronous:
        patroni_lab.set_synchronous(True)
    through, after = four_loops(request_loops), four_loops(request_loops)
    for loop in after:
        loop.label += " (after)"
    with patroni_lab.watch() as watch, running(through):
        wait_for_writes(through, since=0)
        old = patroni_lab.freeze()
        fault_at = time.monotonic()
        try:
            with running(after):
                new = patroni_lab.wait_leader(other_than=old, timeout=patroni_lab.ttl * 3)
                wait_for_writes(ours(after), since=time.monotonic(), port=new.port)
                patroni_lab.thaw(old)
                thawed_at = time.monotonic()
                wait_for(lambda: not old.is_primary(), 30, f"{old.name}'s demotion", 0.01)
                demoted_at = time.monotonic()
                patroni_lab.wait_streaming(old, 60)
                wait_for_writes(after, since=time.monotonic(), port=new.port)
        finally:
            patroni_lab.thaw(old)
    loops = through + after
    change = watch.new_leader_after(fault_at, old.name)
    assert change is not None
    assert change.writable is not None

    final = set(keys_on(new, acknowledged_keys(loops)))
    lost = {loop.label: [u for u in loop.acknowledged if u.key not in final] for loop in loops}
    late = {
        loop.label: sum(u.port == old.port and u.ended > change.writable for u in loop.units)
        for loop in loops
    }
    report(
        f"leader {old.name} frozen ({'synchronous' if synchronous else 'asynchronous'}), "
        f"{new.name} promoted",
        loops,
        fault_at,
        patroni_failover=f"{change.writable - fault_at:.2f}s",
        old_leader_primary_after_thaw=f"{demoted_at - thawed_at:.3f}s (upper bound)",
        acknowledged_by_old_leader_after_new_took_writes={k: v for k, v in late.items() if v},
        acknowledged_then_lost={k: len(v) for k, v in lost.items() if v},
    )

    assert all(loop.duplicates == 0 for loop in loops)
    # Whatever is lost was acknowledged by the old leader: never by the new one.
    assert all(u.port == old.port for units in lost.values() for u in units)
    if synchronous:
        # The old leader cannot commit without its synchronous standby, which
        # now leads: nothing it acknowledged is lost, on either backend. (It
        # may still acknowledge, once awake, a commit its standby had flushed
        # before the freeze: that write is on the new leader.)
        assert lost == {loop.label: [] for loop in loops}
    # Not worse than Django's own backend: no more failed units after the fault.
    failed = {loop.label: len(loop.failed_after(fault_at)) for loop in after}
    assert failed["ours (after)"] <= failed["stock (after)"]
    assert failed["ours persistent (after)"] <= failed["stock persistent (after)"]
    assert sum(failed.values()) > 0  # the fault was felt
