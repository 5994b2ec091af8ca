"""One watcher per process and host list while connections wait for a suitable server.

Without it, every thread (or pool worker) waiting through a failover retries on
its own: hundreds of threads open hundreds of connections per second to the
standbys, each a full TCP and authentication handshake, just as one of them is
being promoted. With it, waiting threads sleep, and one watcher per process
and host list looks for them:

- it keeps a connection to each server that answers, and asks it every
  ``probe_interval`` whether it now suits ``target_session_attrs`` (one round
  trip: a standby being promoted is seen within that interval); the role of a
  server it connects to is asked as well, never believed as reported (a
  pooler may replay a stale report: :mod:`.trust`);
- it replaces a connection whose server has not suited for ``backoff_max``
  with a new one to the same host entry: the entry may be an address that
  moves to the new primary (a virtual IP, a DNS name, a proxy) and leads
  elsewhere by now, while the held connection stays on the old server (a
  standby that will never be promoted); with one ``HOST`` entry that is all
  there is to watch;
- it opens a connection to a server that does not answer at most once per
  backoff step (``backoff_initial`` doubling to ``backoff_max``), one attempt
  per host at a time;
- the moment a suitable server answers, it wakes every waiter (they connect to
  it: the host status memory now lists it first), and it stops, closing its
  connections, when nobody waits any more.

Its cost to the servers is bounded per process, whatever the number of waiting
threads.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from django_pg_failover.background import workers
from django_pg_failover.connecting.attempt import HostFailure, Landing, Outcome
from django_pg_failover.connecting.memory import host_status
from django_pg_failover.connecting.roles import Role, accepts_fallback, suits
from django_pg_failover.settings.hosts import Host
from django_pg_failover.settings.policy import FailoverPolicy

logger = logging.getLogger("django_pg_failover")


@dataclass(frozen=True)
class HostList:
    """What the watcher needs of the alias it searches for: values and callables."""

    alias: str
    hosts: tuple[Host, ...]
    target_session_attrs: str
    policy: FailoverPolicy
    #: One connect attempt at a host, with the alias's parameters (:mod:`.attempt`).
    attempt: Callable[[Host], Outcome]
    #: The role of a held connection's server, asked (one round trip), its report
    #: compared (:func:`.trust.verified_role`).
    ask: Callable[[Any, Host], Role]
    #: Close a connection, whatever it raises.
    close: Callable[[Any], None]


@dataclass
class _HostWatch:
    host: Host
    connection: Any = None
    role: Role | None = None
    in_flight: Future | None = None
    next_attempt: float = 0.0
    failures: int = 0
    last_asked: float = field(default=0.0)
    #: When the held connection was opened.
    held_since: float = 0.0


class Watcher:
    """Looks for a suitable server on behalf of every thread waiting for one."""

    #: Made before a fork, in the child: its thread and lock were the parent's; a
    #: connector that still holds it looks up (or makes) the child's own.
    defunct = False

    def __init__(self, key: tuple, hosts: HostList) -> None:
        self.key = key
        self.hosts = hosts
        self._condition = threading.Condition()
        self._waiters = 0
        #: Completed, and replaced, each time a search ends with a server found (or
        #: with every host refusing): waiters wait for the one current when they came.
        self._changed: Future = Future()
        self._thread: threading.Thread | None = None
        #: No suitable server seen since the watcher started (arrivals wait at once).
        self.searching = True
        #: A thread of the process is walking the host list past its first host.
        self._leading = False
        #: Why each host failed last, as any thread (or the watcher) found: the
        #: error a waiting thread raises names every host, whoever tried it.
        self.failures: dict[Host, HostFailure] = {}

    def record_failures(self, failures: Iterable[HostFailure]) -> None:
        for failure in failures:
            self.failures[failure.host] = failure

    # -- threads that walk the list ------------------------------------------------

    def join_search(self) -> Future | None:
        """None: this thread now leads the search of the host list. Otherwise a
        search is under way (another thread's walk, or this watcher): the future
        completes when it has found a server or given up."""
        with self._condition:
            change = self._search_under_way()
            if change is None:
                self._leading = True
            return change

    def search_under_way(self) -> Future | None:
        """The future that completes when the search under way ends; None if none is."""
        with self._condition:
            return self._search_under_way()

    def _search_under_way(self) -> Future | None:
        if self._leading or (self._thread is not None and self.searching):
            return self._changed
        return None

    def done_leading(self, found: bool, hopeless: bool = False) -> None:
        """The search ended: followers connect now (found), or see the refusals for
        themselves (hopeless); otherwise they wait on for the watcher."""
        with self._condition:
            self._leading = False
            if found or hopeless:
                self._announce()

    def _announce(self) -> None:
        """Wake every waiter (the condition held)."""
        changed, self._changed = self._changed, Future()
        changed.set_result(None)
        self._condition.notify_all()

    # -- waiters ------------------------------------------------------------------

    def wait(self, deadline: float, hand_over: bool = False, change: Future | None = None) -> bool:
        """Sleep until a suitable server answers (True) or ``deadline`` (False).

        ``hand_over``: the caller led a search that found nothing; the watcher
        takes it over in the same step, so that no other thread starts another.
        ``change``: the search to wait for, as :meth:`join_search` gave it (an
        end that came since then is not missed); by default, the next one.
        """
        with self._condition:
            if hand_over:
                self._leading = False
            if change is None:
                change = self._changed
            self._waiters += 1
            if self._thread is None:
                self.searching = True
                self._thread = threading.Thread(
                    target=self._run, name="pg-failover-watcher", daemon=True
                )
                self._thread.start()
            try:
                while not change.done():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._condition.wait(remaining)
                return True
            finally:
                self._waiters -= 1
                self._condition.notify_all()  # the watcher may stop if none is left

    # -- the watcher thread -----------------------------------------------------------

    def _run(self) -> None:
        hosts = [_HostWatch(host) for host in self.hosts.hosts]
        policy = self.hosts.policy
        try:
            while True:
                with self._condition:
                    if self._waiters == 0:
                        return
                found = self._round(hosts)
                if found is not None:
                    with self._condition:
                        self.searching = False
                        self._announce()
                    logger.info(
                        "database alias %r: %s answers as a %s: waking the waiting connections",
                        self.hosts.alias,
                        found.host,
                        found.role.value if found.role else "server",
                    )
                with self._condition:
                    if self._waiters == 0:
                        return
                    self._condition.wait(policy.probe_interval)
        finally:
            for watch in hosts:
                if watch.connection is not None:
                    self.hosts.close(watch.connection)
                if watch.in_flight is not None:
                    watch.in_flight.add_done_callback(self._close_when_done)
            with self._condition:
                self._thread = None
                if self._waiters:  # arrived while it was stopping: start again
                    self.searching = True
                    self._thread = threading.Thread(
                        target=self._run, name="pg-failover-watcher", daemon=True
                    )
                    self._thread.start()

    def _round(self, hosts: list[_HostWatch]) -> _HostWatch | None:
        """Ask every server once; the first that suits, if any."""
        spec = self.hosts
        target = spec.target_session_attrs
        now = time.monotonic()
        for watch in hosts:
            if watch.in_flight is not None and watch.in_flight.done():
                self._collect(watch, watch.in_flight)
                watch.in_flight = None
            if watch.in_flight is not None:
                continue  # a connect or a question still under way (a slow host)
            if watch.connection is not None and self._unsuitable_for_long(watch, now):
                # The address may lead to another server by now: connect anew.
                spec.close(watch.connection)
                watch.connection, watch.role = None, None
                watch.in_flight = workers.submit(spec.attempt, watch.host)
            elif watch.connection is not None:
                watch.in_flight = workers.submit(self._ask, watch)
            elif now >= watch.next_attempt:
                watch.in_flight = workers.submit(spec.attempt, watch.host)
        # Answers that came at once count in this round (loopback: microseconds).
        for watch in hosts:
            future = watch.in_flight
            if future is not None:
                # A timeout, or the attempt's own error: collected below.
                with suppress(Exception):
                    future.result(timeout=spec.policy.probe_interval)
                if future.done():
                    self._collect(watch, future)
                    watch.in_flight = None
        for watch in hosts:
            if watch.role is not None and suits(watch.role, target):
                host_status.record_role(watch.host, watch.role, spec.policy.host_recheck)
                return watch
        if accepts_fallback(target):  # prefer-standby: no standby, but a server answers
            return next((watch for watch in hosts if watch.role is not None), None)
        return None

    def _unsuitable_for_long(self, watch: _HostWatch, now: float) -> bool:
        """The held connection's server has not suited since ``backoff_max`` ago."""
        role = watch.role
        return (
            role is not None
            and not suits(role, self.hosts.target_session_attrs)
            and now - watch.held_since >= self.hosts.policy.backoff_max
        )

    def _ask(self, watch: _HostWatch) -> Role | None:
        """The role of a server the watcher holds a connection to (one round trip:
        what a held connection's server reported may be stale)."""
        return self.hosts.ask(watch.connection, watch.host)

    def _close_when_done(self, future: Future) -> None:
        outcome = None if future.exception() else future.result()
        if isinstance(outcome, Landing):
            self.hosts.close(outcome.connection)

    def _collect(self, watch: _HostWatch, future: Future) -> None:
        try:
            result = future.result()
        except Exception:  # the held connection is gone (or the attempt failed unexpectedly)
            self.hosts.close(watch.connection)
            watch.connection, watch.role = None, None
            self._back_off(watch)
            return
        if isinstance(result, Landing):
            result.connection.autocommit = True
            watch.connection, watch.role, watch.failures = result.connection, result.role, 0
            watch.held_since = time.monotonic()
        elif isinstance(result, Role) or result is None:
            watch.role = result
        else:  # a HostFailure
            watch.role = None
            self.failures[watch.host] = result
            self._back_off(watch)

    def _back_off(self, watch: _HostWatch) -> None:
        watch.failures += 1
        watch.next_attempt = time.monotonic() + self.hosts.policy.backoff(watch.failures)


#: The process's watchers, by host list, target and identity.
watchers: dict[tuple, Watcher] = {}
#: Changes whenever ``watchers`` gains an entry (or is emptied after a fork): a
#: connector that looked for its own watcher in vain need not look again until then.
generation = 0
_lock = threading.Lock()


def watcher_for(key: tuple, hosts: HostList) -> Watcher:
    """The process's watcher for a host list, target and identity (``key``)."""
    with _lock:
        watcher = watchers.get(key)
        if watcher is None:
            global generation
            watcher = watchers[key] = Watcher(key, hosts)
            generation += 1
        return watcher


def known_watcher(key: tuple) -> Watcher | None:
    """The process's watcher of ``key`` if a connect of it ever waited."""
    return watchers.get(key) if watchers else None


def search_under_way(watcher: Watcher) -> Future | None:
    """The end of the search of ``watcher``'s list if one is under way (a thread walking
    the list past its first host, or the watcher itself): a new connect waits for it."""
    # A look without the lock first: every connect asks, and seldom is the answer yes.
    if not (watcher._leading or watcher._thread is not None):
        return None
    return watcher.search_under_way()


def _after_fork_in_child() -> None:
    global _lock, generation
    _lock = threading.Lock()
    for watcher in watchers.values():
        watcher.defunct = True
    watchers.clear()
    generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
