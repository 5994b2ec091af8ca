"""The host status memory's ordering rules, with a clock the test controls."""

from __future__ import annotations

import os
import threading

import pytest

from django_pg_failover.connecting.memory import HostState, HostStatus
from django_pg_failover.connecting.roles import Role
from django_pg_failover.settings.hosts import Host

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
    status.record_down(A, recheck=10)
    assert status.order([A, B, C], "read-write") == (B, C, A)
    clock.now += 9.9
    assert status.order([A, B, C], "read-write") == (B, C, A)
    clock.now += 0.2
    assert status.order([A, B, C], "read-write") == (A, B, C)


def test_wrong_role_goes_after_the_candidates(status) -> None:
    status.record_role(A, Role.STANDBY, recheck=10)
    status.record_role(B, Role.READ_ONLY_PRIMARY, recheck=10)
    status.record_role(C, Role.PRIMARY, recheck=10)
    assert status.order([A, B, C], "read-write") == (C, A, B)
    # A fenced primary is still a primary for "primary" (libpq's rule).
    assert status.order([A, B, C], "primary") == (B, C, A)
    assert status.order([C, B, A], "standby") == (A, C, B)
    assert status.order([C, B, A], "read-only") == (B, A, C)
    assert status.order([C, B, A], "prefer-standby") == (A, C, B)
    assert status.order([A, B, C], "any") == (A, B, C)


def test_all_bad_still_tries_every_host(status) -> None:
    for host in (A, B, C):
        status.record_down(host, recheck=10)
    assert status.order([A, B, C], "read-write") == (A, B, C)


def test_newer_evidence_replaces_older(status) -> None:
    status.record_role(A, Role.PRIMARY, recheck=10)
    status.record(A, HostState.DOWN, recheck=10)
    assert status.state(A) is HostState.DOWN
    status.record_role(A, Role.STANDBY, recheck=10)
    assert status.state(A) is HostState.STANDBY
    assert status.order([A, B], "read-write") == (B, A)


def test_recheck_zero_remembers_nothing(status) -> None:
    status.record_down(A, recheck=0)
    status.record_role(B, Role.PRIMARY, recheck=0)
    assert status.snapshot() == {}


def test_shuffle_keeps_ranks(status) -> None:
    status.record_down(C, recheck=10)
    seen = {status.order([A, B, C], "any", shuffle=True) for _ in range(200)}
    assert seen == {(A, B, C), (B, A, C)}


def test_concurrent_updates_and_reads(status) -> None:
    hosts = [Host(f"h{i}", 5432) for i in range(20)]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(500):
                host = hosts[(n + i) % len(hosts)]
                if i % 2:
                    status.record_down(host, recheck=10)
                else:
                    status.record_role(host, Role.STANDBY, recheck=10)
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


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_forked_while_the_lock_is_held_can_use_the_memory() -> None:
    """gunicorn --preload forks while other threads may hold the lock."""
    from django_pg_failover.connecting.memory import host_status

    host_status._lock.acquire()  # as a thread of the parent would, at fork time
    try:
        pid = os.fork()
        if pid == 0:  # the child: the memory must answer at once
            code = 1
            try:
                done = threading.Event()
                worker = threading.Thread(
                    target=lambda: (host_status.record_down(A, 10), done.set()), daemon=True
                )
                worker.start()
                code = 0 if done.wait(5) and host_status.state(A) is HostState.DOWN else 1
            finally:
                os._exit(code)
    finally:
        host_status._lock.release()
    _, status_code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status_code) == 0
    host_status.clear()


def test_a_distrusted_host_stays_distrusted_until_cleared(status, clock) -> None:
    """A contradicted report is not forgotten with the records: a pooler stays in the way."""
    assert status.distrust_reports(A) is True
    assert status.distrust_reports(A) is False  # logged once
    clock.now += 86400 * 365
    assert status.snapshot() == {}
    assert A in status.distrusted
    assert B not in status.distrusted
    status.clear()
    assert status.distrusted == set()
