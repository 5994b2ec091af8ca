"""One watcher per process and host list while connections wait for a suitable server.

Without it, every thread (or pool worker) waiting through a failover retries on
its own: hundreds of threads open hundreds of connections per second to the
standbys, each a full TCP and authentication handshake, just as one of them is
being promoted. With it, waiting threads sleep, and one watcher per process
and host list looks for them:

- it keeps a connection to each server that answers, and asks it every
  ``probe_interval`` whether it now suits ``target_session_attrs`` (one round
  trip: a standby being promoted is seen within that interval);
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
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .background import workers
from .hosts import Host
from .status import host_status
from .targets import Role, accepts_fallback, role_from, suits

if TYPE_CHECKING:
    from .connect import Connector, HostFailure

logger = logging.getLogger("django_pg_failover")

_ROLE_SQL = "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')"


@dataclass
class _HostWatch:
    host: Host
    connection: Any = None
    role: Role | None = None
    in_flight: Future | None = None
    next_attempt: float = 0.0
    failures: int = 0
    last_asked: float = field(default=0.0)


class Watcher:
    """Looks for a suitable server on behalf of every thread waiting for one."""

    def __init__(self, key: tuple, connector: Connector, params: Mapping[str, Any]) -> None:
        self.key = key
        self.connector = connector
        self.params = dict(params)
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
        hosts = [_HostWatch(host) for host in self.connector.hosts]
        policy = self.connector.policy
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
                        self.connector.alias,
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
                    self.connector.driver.close_quietly(watch.connection)
                if watch.in_flight is not None:
                    self.connector.close_when_done(watch.in_flight)
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
        connector = self.connector
        target = connector.target_session_attrs
        now = time.monotonic()
        for watch in hosts:
            if watch.in_flight is not None and watch.in_flight.done():
                self._collect(watch, watch.in_flight)
                watch.in_flight = None
            if watch.in_flight is not None:
                continue  # a connect or a question still under way (a slow host)
            if watch.connection is not None:
                watch.in_flight = workers.submit(self._ask, watch)
            elif now >= watch.next_attempt:
                watch.in_flight = workers.submit(connector.attempt, watch.host, self.params)
        # Answers that came at once count in this round (loopback: microseconds).
        for watch in hosts:
            future = watch.in_flight
            if future is not None:
                # A timeout, or the attempt's own error: collected below.
                with suppress(Exception):
                    future.result(timeout=connector.policy.probe_interval)
                if future.done():
                    self._collect(watch, future)
                    watch.in_flight = None
        for watch in hosts:
            if watch.role is not None and suits(watch.role, target):
                host_status.record_role(watch.host, watch.role, connector.policy.host_recheck)
                return watch
        if accepts_fallback(target):  # prefer-standby: no standby, but a server answers
            return next((watch for watch in hosts if watch.role is not None), None)
        return None

    def _ask(self, watch: _HostWatch) -> Role | None:
        """The role of a server the watcher holds a connection to (one round trip)."""
        with watch.connection.cursor() as cursor:
            cursor.execute(_ROLE_SQL)
            in_recovery, read_only = cursor.fetchone()
        return role_from(bool(in_recovery), read_only == "on")

    def _collect(self, watch: _HostWatch, future: Future) -> None:
        from .connect import Landing

        connector = self.connector
        driver = connector.driver
        try:
            result = future.result()
        except Exception:  # the held connection is gone (or the attempt failed unexpectedly)
            driver.close_quietly(watch.connection)
            watch.connection, watch.role = None, None
            self._back_off(watch)
            return
        if isinstance(result, Landing):
            result.connection.autocommit = True
            watch.connection, watch.role, watch.failures = result.connection, result.role, 0
        elif isinstance(result, Role) or result is None:
            watch.role = result
        else:  # a HostFailure
            watch.role = None
            self.failures[watch.host] = result
            self._back_off(watch)

    def _back_off(self, watch: _HostWatch) -> None:
        watch.failures += 1
        watch.next_attempt = time.monotonic() + self.connector.policy.backoff(watch.failures)


_watchers: dict[tuple, Watcher] = {}
_lock = threading.Lock()


def watcher_for(connector: Connector, params: Mapping[str, Any]) -> Watcher:
    """The process's watcher for this host list, target and identity."""
    key = watcher_key(connector, params)
    with _lock:
        watcher = _watchers.get(key)
        if watcher is None:
            watcher = _watchers[key] = Watcher(key, connector, params)
        # Remembered by the connector (one alias's settings in one thread: one
        # key), for the question every connect asks (active_search()).
        connector.watcher = watcher
        return watcher


def active_search(connector: Connector, params: Mapping[str, Any]) -> tuple[Watcher, Future] | None:
    """The watcher of this host list and the end of its search, if one is under way (a
    thread walking the list past its first host, or the watcher itself): a new connect
    waits for it."""
    watcher = connector.watcher
    if watcher is None:
        if not _watchers:  # no host list of the process has waited yet
            return None
        # Another connector (another thread's wrapper) of the same list may have.
        watcher = _watchers.get(watcher_key(connector, params))
        if watcher is None:
            return None
        connector.watcher = watcher
    # A look without the lock first: every connect asks, and seldom is the answer yes.
    if not (watcher._leading or watcher._thread is not None):
        return None
    change = watcher.search_under_way()
    if change is not None:
        return watcher, change
    return None


def forget_failures(connector: Connector, params: Mapping[str, Any]) -> None:
    """A connection was made: the failures remembered for the error message are past."""
    watcher = connector.watcher or _watchers.get(watcher_key(connector, params))
    if watcher is not None:
        watcher.failures.clear()


def watcher_key(connector: Connector, params: Mapping[str, Any]) -> tuple:
    return (
        connector.hosts,
        connector.target_session_attrs,
        params.get("dbname"),
        params.get("user"),
        params.get("password"),
    )


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    _watchers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
