"""One pass over the hosts: attempts in parallel, the first suitable server to answer wins.

The hosts are tried in order. When an attempt has not finished after
``attempt_delay``, the next host is tried beside it (the idea of RFC 8305,
"happy eyeballs"), at most :data:`MAX_IN_FLIGHT` at a time; an attempt that
ends without a suitable server starts the next host at once. Among attempts
that end together, the preferred (earlier) host wins. With
``prefer-standby``, the first server that answered and is not a standby is
kept aside, and used when no standby answers in the pass.

The attempts still in flight when the race ends are closed as soon as they
finish; a host that was overtaken and had still not answered while another
server won is marked down at once (its own attempt records what it finds).

**One search per process.** Every pass tries its first host; going on down
the list is the search for a new server during a failover, which one thread
of the process leads at a time (:mod:`.search`). A race given a
``coordinator`` joins the search before its second attempt: when another
thread (or the watcher) already searches, the race stops starting attempts
and ends *deferred*, as soon as that search ends or its own attempts do.

A :class:`Race` knows nothing of drivers or threads: it is given callables
(start an attempt, close a connection, mark a host down), and its unit tests
drive it with fake attempts.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Any, Protocol

from django_pg_failover.connecting.attempt import HostFailure, Landing, Outcome
from django_pg_failover.connecting.roles import accepts_fallback, suits, wrong_role_reason
from django_pg_failover.settings.hosts import Host

#: Connect attempts one pass keeps in flight at most (hung hosts overtaken).
MAX_IN_FLIGHT = 3


class Search(Protocol):
    """The process's search of a host list, as a race takes part in it (:mod:`.search`)."""

    def join_search(self) -> Future | None:
        """None: the caller now leads the search; else the end of the one under way."""

    def done_leading(self, found: bool, hopeless: bool = False) -> None:
        """The search this caller led ended (found a server, or every host refused)."""


@dataclass
class PassResult:
    landing: Landing | None
    failures: list[HostFailure]
    #: This thread searched and found nothing: it still leads the search, until it
    #: hands it to the watcher (or gives up).
    searching: Search | None = None
    #: Another thread was already searching the list, and this one deferred to it:
    #: completes when that search ends.
    search_end: Future | None = None

    @property
    def deferred(self) -> bool:
        return self.search_end is not None


class Race:
    """One pass over ``hosts`` (see the module's docstring)."""

    def __init__(
        self,
        hosts: Sequence[Host],
        *,
        target_session_attrs: str,
        attempt_delay: float,
        start: Callable[[Host], Future[Outcome]],
        close: Callable[[Any], None],
        mark_down: Callable[[Host], None],
        coordinator: Callable[[], Search] | None = None,
    ) -> None:
        self.hosts = list(hosts)
        self.target = target_session_attrs
        self.attempt_delay = attempt_delay
        self._start_attempt = start
        self._close = close
        self._mark_down = mark_down
        self._coordinator = coordinator
        self._pending = deque(self.hosts)
        self._in_flight: dict[Future[Outcome], Host] = {}
        self._failures: dict[Host, HostFailure] = {}
        self._overtaken: set[Host] = set()
        self._fallback: Landing | None = None
        self._winner: Landing | None = None
        self._leader: Search | None = None
        #: The end of another thread's search, once this race deferred to it.
        self._search_end: Future | None = None

    def run(self, first: Outcome | None = None) -> PassResult:
        """Race to the end. ``first``: what an attempt at one of the hosts made
        beforehand found (the calling thread's own, on the healthy path)."""
        if first is not None:
            self._pending.remove(first.host)
            self._collect(first.host, first)
        if self._winner is None and self._pending:
            self._start_next()
        try:
            while self._in_flight and self._winner is None:
                if self._search_end is not None and self._search_end.done():
                    # Deferred: the search ended; the caller connects to what it
                    # found, and a silent host in flight is not waited for.
                    break
                self._step()
        finally:
            searching = self._finish(raising=sys.exc_info()[0] is not None)
        failed = [self._failures[h] for h in self.hosts if h in self._failures]
        return PassResult(self._winner, failed, searching, self._search_end)

    # -- the steps ------------------------------------------------------------------------

    def _start_next(self) -> None:
        """Start the next host, unless the search must be joined first and is taken."""
        started_any = self._in_flight or self._failures or self._fallback
        if self._coordinator is not None and self._leader is None and started_any:
            search = self._coordinator()
            self._search_end = search.join_search()
            if self._search_end is not None:
                return  # another thread searches: no new attempt
            self._leader = search
        host = self._pending.popleft()
        self._in_flight[self._start_attempt(host)] = host

    def _step(self) -> None:
        """Wait for an attempt to end (or ``attempt_delay``, to overtake); collect it."""
        overtake = (
            bool(self._pending)
            and len(self._in_flight) < MAX_IN_FLIGHT
            and self._search_end is None
        )
        waited_for: list[Future] = list(self._in_flight)
        if self._search_end is not None:
            waited_for.append(self._search_end)
        done, _ = wait(
            waited_for,
            timeout=self.attempt_delay if overtake else None,
            return_when=FIRST_COMPLETED,
        )
        done.discard(self._search_end)
        if self._search_end is not None and self._search_end.done():
            return
        if not done:  # every attempt in flight is slow: try the next host beside
            self._overtaken.update(self._in_flight.values())
            self._start_next()
            return
        # Attempts that ended together: the preferred host first.
        for future in sorted(done, key=lambda f: self.hosts.index(self._in_flight[f])):
            self._collect(self._in_flight.pop(future), future.result())
            if self._winner is not None:
                return
            if self._pending and self._search_end is None:  # answered at once: the next
                self._start_next()

    def _collect(self, host: Host, outcome: Outcome) -> None:
        if isinstance(outcome, HostFailure):
            self._failures[host] = outcome
        elif outcome.role is None or suits(outcome.role, self.target):
            self._winner = outcome
        elif accepts_fallback(self.target) and self._fallback is None:
            self._fallback = outcome
        else:
            self._close(outcome.connection)
            self._failures[host] = HostFailure(
                host, wrong_role_reason(self.target, outcome.role), None
            )

    def _finish(self, raising: bool) -> Search | None:
        """Let go of what is still running; settle the search this race led.

        Returns the search when it goes on (nothing found, hope left): the
        caller hands it to the watcher.
        """
        for future, host in self._in_flight.items():
            future.add_done_callback(self._close_when_done)
            if self._winner is not None and host in self._overtaken:
                # Silent while another server answered: last in line until it
                # answers (its attempt, still running, records what it finds).
                self._mark_down(host)
        if self._winner is None:
            self._winner, self._fallback = self._fallback, None
        elif self._fallback is not None:
            self._close(self._fallback.connection)
        if self._leader is None:
            return None
        failures = self._failures
        hopeless = len(failures) == len(self.hosts) and all(f.final for f in failures.values())
        if self._winner is not None or hopeless or raising:
            self._leader.done_leading(found=self._winner is not None, hopeless=hopeless)
            return None
        return self._leader

    def _close_when_done(self, future: Future[Outcome]) -> None:
        """An attempt that lost the race: close its connection once it has one."""
        outcome = None if future.exception() else future.result()
        if isinstance(outcome, Landing):
            self._close(outcome.connection)
