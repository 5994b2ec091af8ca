"""The process's search of a host list (:mod:`django_pg_failover.connecting.search`), driven by
fake attempts and fake held connections: no server, only the watcher's rules."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future
from typing import Any

from django_pg_failover.connecting import search
from django_pg_failover.connecting.attempt import HostFailure, Landing, Outcome
from django_pg_failover.connecting.roles import Role, asked_role
from django_pg_failover.connecting.search import HostList, Watcher
from django_pg_failover.connecting.verdicts import Verdict
from django_pg_failover.settings.hosts import Host
from django_pg_failover.settings.policy import FailoverPolicy

A, B = Host("10.0.0.1", 5432), Host("10.0.0.2", 5432)
# Fast rounds, no host memory (nothing of these hosts is recorded for other tests).
POLICY = FailoverPolicy(
    probe_interval=0.005, backoff_initial=0.01, backoff_max=0.05, host_recheck=0
)


class HeldConnection:
    """What the watcher does with a connection it holds: autocommit, and the role query."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self.autocommit = False
        self.closed = False

    def cursor(self) -> Any:
        held = self

        class Cursor:
            def __enter__(self) -> Cursor:
                return self

            def __exit__(self, *exc: object) -> None:
                pass

            def execute(self, sql: str) -> None:
                self.row = (held.role is Role.STANDBY, "on" if held.role.read_only else "off")

            def fetchone(self) -> tuple:
                return self.row

        return Cursor()


class Servers:
    """Fake attempts: each host answers as ``roles`` says now (None: no answer)."""

    def __init__(self, **roles: Role | None) -> None:
        self.roles = {A: roles.get("a"), B: roles.get("b")}
        self.attempts: list[Host] = []
        self.held: dict[Host, HeldConnection] = {}
        self.closed: list[Any] = []

    def attempt(self, host: Host) -> Outcome:
        self.attempts.append(host)
        role = self.roles[host]
        if role is None:
            return HostFailure(host, "Connection refused", Verdict.UNREACHABLE)
        connection = self.held[host] = HeldConnection(role)
        return Landing(connection, host, role)

    def promote(self, host: Host) -> None:
        self.roles[host] = Role.PRIMARY
        if host in self.held:
            self.held[host].role = Role.PRIMARY

    def move(self, host: Host, role: Role) -> None:
        """The address now leads to another server: new connections only."""
        self.roles[host] = role

    def watcher(self, target: str = "read-write") -> Watcher:
        return Watcher(
            ("test", target),
            HostList(
                alias="test",
                hosts=(A, B),
                target_session_attrs=target,
                policy=POLICY,
                attempt=self.attempt,
                ask=lambda connection, host: asked_role(connection),
                close=self.closed.append,
            ),
        )


def wait_in_thread(watcher: Watcher, seconds: float) -> tuple[threading.Thread, list[bool]]:
    woken: list[bool] = []
    thread = threading.Thread(target=lambda: woken.append(watcher.wait(time.monotonic() + seconds)))
    thread.start()
    return thread, woken


def test_a_waiter_is_woken_when_a_standby_is_promoted_and_the_watcher_stops() -> None:
    servers = Servers(a=None, b=Role.STANDBY)  # the primary is gone
    watcher = servers.watcher()
    thread, woken = wait_in_thread(watcher, 10)
    deadline = time.monotonic() + 5
    while B not in servers.held and time.monotonic() < deadline:  # a poll with a deadline
        time.sleep(0.005)
    servers.promote(B)  # seen through the held connection's role query
    thread.join(10)
    assert woken == [True]
    assert servers.held[B].autocommit  # held in autocommit, asked each round
    deadline = time.monotonic() + 5
    while watcher._thread is not None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert watcher._thread is None  # nobody waits: it stops
    assert servers.held[B] in servers.closed  # and closes what it held


def test_a_server_the_target_rejects_never_wakes_anyone() -> None:
    servers = Servers(a=Role.STANDBY, b=Role.READ_ONLY_PRIMARY)
    watcher = servers.watcher("read-write")
    started = time.monotonic()
    assert watcher.wait(started + 0.3) is False  # the deadline, not a wake-up
    assert time.monotonic() - started >= 0.3
    # Each held connection is replaced once per backoff_max (its address may
    # have moved), not once per round.
    assert 2 <= servers.attempts.count(A) <= 0.3 / POLICY.backoff_max + 2


def test_an_address_that_moved_to_a_primary_is_followed() -> None:
    """One HOST entry (a virtual IP, a DNS name, a proxy) led to a standby; it now leads
    to the new primary, while the connection held to the standby stays a standby."""
    servers = Servers(a=Role.STANDBY, b=None)
    watcher = servers.watcher()
    thread, woken = wait_in_thread(watcher, 10)
    deadline = time.monotonic() + 5
    while A not in servers.held and time.monotonic() < deadline:  # a poll with a deadline
        time.sleep(0.005)
    held = servers.held[A]
    moved_at = time.monotonic()
    servers.move(A, Role.PRIMARY)
    thread.join(10)
    assert woken == [True]
    assert time.monotonic() - moved_at < 1.0  # about backoff_max (50 ms), not the deadline
    assert held.role is Role.STANDBY
    assert held in servers.closed  # replaced, not kept


def test_prefer_standby_takes_any_server_when_no_standby_answers() -> None:
    servers = Servers(a=None, b=Role.PRIMARY)
    assert servers.watcher("prefer-standby").wait(time.monotonic() + 5) is True


def test_a_silent_host_is_backed_off_and_its_failure_remembered() -> None:
    servers = Servers(a=None, b=None)
    watcher = servers.watcher()
    assert watcher.wait(time.monotonic() + 0.5) is False
    # Backoff doubles from 10 ms to 50 ms: far fewer attempts than rounds of 5 ms.
    rounds = 0.5 / POLICY.probe_interval
    assert 2 <= servers.attempts.count(A) < rounds / 3
    assert set(watcher.failures) == {A, B}
    assert watcher.failures[A].reason == "Connection refused"


def test_one_thread_leads_the_search_and_the_others_wait_for_its_end() -> None:
    watcher = Servers().watcher()
    assert watcher.join_search() is None  # this thread leads
    end = watcher.join_search()  # a second thread: the search is under way
    assert isinstance(end, Future)
    assert not end.done()
    watcher.done_leading(found=True)
    assert end.done()  # the followers connect now
    assert watcher.join_search() is None  # and the next search may start


def test_a_search_handed_over_to_the_watcher_stays_under_way() -> None:
    servers = Servers(a=None, b=None)
    watcher = servers.watcher()
    assert watcher.join_search() is None
    # The leader found nothing and hands the search to the watcher in one step:
    # another thread arriving meanwhile still sees a search under way.
    thread = threading.Thread(target=lambda: watcher.wait(time.monotonic() + 0.3, hand_over=True))
    thread.start()
    deadline = time.monotonic() + 5
    while watcher._thread is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert watcher.search_under_way() is not None
    thread.join(5)


def test_a_forked_child_leaves_the_parent_s_watchers_and_waiting_counts_behind() -> None:
    """In a child, a watcher made before the fork is defunct (its thread and lock were
    the parent's: a connector holding it looks up the child's own), and the metrics'
    waiting threads and outages are the parent's, not the child's."""
    from django_pg_failover import metrics

    inherited = Servers(a=Role.STANDBY).watcher()
    search.watchers[inherited.key] = inherited
    metrics.waiting_threads["forked"] = 3
    ok = False
    try:
        pid = os.fork()
        if pid == 0:  # the child: report by exit status only, never return into pytest
            try:
                ok = (
                    inherited.defunct
                    and search.watchers == {}
                    and "forked" not in metrics.waiting_threads
                )
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not inherited.defunct  # the parent's own, still in use
    finally:
        search.watchers.pop(inherited.key, None)
        metrics.waiting_threads.pop("forked", None)
