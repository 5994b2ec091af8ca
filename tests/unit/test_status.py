"""The host status memory's ordering rules, with a clock the test controls."""

from __future__ import annotations

import threading

import pytest

from django_pg_failover.errors import HostFailure
from django_pg_failover.hosts import Host
from django_pg_failover.status import HostState, HostStatus

A, B, C = Host("a", 1), Host("b", 2), Host("c", 3)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def status(clock: Clock) -> HostStatus:
    return HostStatus(clock=clock)


def test_unknown_hosts_keep_their_order(status: HostStatus) -> None:
    assert status.order([A, B, C], "read-write") == (A, B, C)


def test_down_host_goes_last_and_comes_back_after_recheck(status, clock) -> None:
    status.record_failures([HostFailure("a", 1, "timeout expired")], recheck=10)
    assert status.order([A, B, C], "read-write") == (B, C, A)
    clock.now += 9.9
    assert status.order([A, B, C], "read-write") == (B, C, A)
    clock.now += 0.2
    assert status.order([A, B, C], "read-write") == (A, B, C)


def test_wrong_role_goes_after_the_candidates(status) -> None:
    status.record_connected([A, B, C], C, "primary", "read-write", recheck=10)
    status.record_failures([HostFailure("a", 1, "session is read-only")], recheck=10)
    # b was skipped by a read-write connection: it is down or a standby.
    assert status.snapshot()[B].state is HostState.SKIPPED
    assert status.order([A, B, C], "read-write") == (C, A, B)
    assert status.order([A, B, C], "prefer-standby") == (A, B, C)
    assert status.order([C, B, A], "standby") == (B, A, C)
    assert status.order([A, B, C], "any") == (A, B, C)


def test_all_bad_still_tries_every_host(status) -> None:
    failures = [HostFailure(h.host, h.port, "Connection refused") for h in (A, B, C)]
    status.record_failures(failures, recheck=10)
    assert status.order([A, B, C], "read-write") == (A, B, C)


def test_lost_session_marks_host_down_or_demoted(status) -> None:
    status.record_lost(A, demoted=False, recheck=10)
    status.record_lost(B, demoted=True, recheck=10)
    assert status.snapshot()[A].state is HostState.DOWN
    assert status.snapshot()[B].state is HostState.STANDBY
    assert status.order([A, B, C], "read-write") == (C, B, A)


def test_recheck_zero_remembers_nothing(status) -> None:
    status.record_lost(A, demoted=False, recheck=0)
    status.record_connected([A, B], B, "primary", "read-write", recheck=0)
    assert status.snapshot() == {}


def test_role_unknown_on_old_servers_is_inferred_for_writers(status) -> None:
    status.record_connected([A], A, None, "read-write", recheck=10)
    status.record_connected([B], B, None, "any", recheck=10)
    assert status.snapshot() == {A: status.snapshot()[A]}
    assert status.snapshot()[A].state is HostState.PRIMARY


def test_shuffle_keeps_ranks(status) -> None:
    status.record_lost(C, demoted=False, recheck=10)
    seen = {status.order([A, B, C], "any", shuffle=True) for _ in range(200)}
    assert seen == {(A, B, C), (B, A, C)}


def test_concurrent_updates_and_reads(status) -> None:
    hosts = [Host(f"h{i}", 5432) for i in range(20)]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(500):
                host = hosts[(n + i) % len(hosts)]
                status.record_lost(host, demoted=bool(i % 2), recheck=10)
                ordered = status.order(hosts, "read-write")
                assert sorted(ordered, key=hosts.index) == hosts
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert set(status.snapshot()) == set(hosts)
