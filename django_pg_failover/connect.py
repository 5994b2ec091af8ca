"""Opening a connection: the host list walked one server at a time, retried until a deadline.

The backend does not hand libpq the whole host list. libpq stops at the first
server that refuses the connection (a ``pg_hba.conf`` line, a wrong password)
even when the next host could serve, and reports each host's failure only
when all fail. Connecting to one host at a time gives an exact verdict per
host (:mod:`.verdicts`), the server's role (:mod:`.targets`), and lets a silent
host be overtaken: when a host has not answered within ``attempt_delay``, the
next candidate is tried beside it (the idea of RFC 8305, "happy eyeballs"),
at most :data:`MAX_IN_FLIGHT` at a time. The first suitable server to answer
wins; the attempts still in flight are closed as soon as they finish.

:class:`Connector` repeats such walks until ``retry_timeout``: a host that
refused for good is not tried again in that call, and when every host has
refused for good the error is raised at once.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

from . import signals
from .background import fork_gate, workers
from .drivers import Driver
from .hosts import Host
from .policy import FailoverPolicy
from .status import host_status
from .targets import Role, accepts_fallback, role_from, suits
from .verdicts import Verdict, connect_verdict, server_message, unexpected_failure
from .watcher import Watcher, active_search, forget_failures, watcher_for

logger = logging.getLogger("django_pg_failover")

#: Connect attempts one connect keeps in flight at most (hung hosts overtaken).
MAX_IN_FLIGHT = 3
# A pool's worker waits without a deadline: it looks up from the watcher this often.
_KEEP_WAITING_CHECK = 1.0

#: Per host, when a connect attempt in a calling thread began (the last of them):
#: one unanswered for ``attempt_delay`` sends the next connects on a walk instead.
_connecting_inline: dict[Host, float] = {}

# Connection keywords the walk sets per attempt itself.
_WALK_KEYWORDS = ("host", "port", "hostaddr", "target_session_attrs", "load_balance_hosts")


@dataclass(frozen=True)
class HostFailure:
    """Why one host could not be used in a connect attempt."""

    host: Host
    reason: str
    #: None: the server answered, with a role that does not suit.
    verdict: Verdict | None
    error: BaseException | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Kept (the error a caller finally gets is chained to it), but not the
        # frames it was raised through: a timed-out attempt's frames hold
        # psycopg's connect generator and, with it, the attempt's open socket,
        # for as long as the failure is remembered.
        _drop_tracebacks(self.error)

    @property
    def final(self) -> bool:
        return self.verdict is not None and self.verdict.final

    #: (A failure never suits; see :attr:`Landing.suits`.)
    suits = False


@dataclass
class Landing:
    """A connection, the server it reached, and what it took."""

    connection: Any
    host: Host
    role: Role | None
    passes: int = 1
    elapsed: float = 0.0
    #: When the attempt that opened it began and ended (monotonic): the server's
    #: session started in between (the stall watchdog knows it again by that).
    began: float = 0.0
    ended: float = 0.0
    #: Judged suitable by the calling thread's own attempt (the healthy path).
    suits: bool = False


@dataclass
class _Walk:
    landing: Landing | None
    failures: list[HostFailure]
    #: This thread searched and found nothing: it still leads the search, until it
    #: hands it to the watcher (or gives up).
    searching: Watcher | None = None
    #: Another thread was already searching the list, and this one deferred to it:
    #: completes when that search ends.
    search_end: Future | None = None

    @property
    def deferred(self) -> bool:
        return self.search_end is not None


def _drop_tracebacks(error: BaseException | None) -> None:
    """Let go of the frames of ``error`` and of the errors chained to it."""
    pending, seen = [error], set()
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        exc.__traceback__ = None
        pending += [exc.__cause__, exc.__context__]


def server_role(driver: Driver, connection: Any) -> Role | None:
    """The server's role from what it reported at start-up (PostgreSQL 14+)."""
    hot_standby = driver.parameter_status(connection, "in_hot_standby")
    if hot_standby is None:
        return None
    read_only = driver.parameter_status(connection, "default_transaction_read_only")
    return role_from(hot_standby == "on", read_only == "on")


def _ask_role(driver: Driver, connection: Any) -> Role:
    """Ask a server older than 14, which reports neither setting (one round trip)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')")
        in_recovery, read_only = cursor.fetchone()
    if not connection.autocommit:
        connection.rollback()
    return role_from(bool(in_recovery), read_only == "on")


def wrong_role_reason(target_session_attrs: str, role: Role) -> str:
    """libpq's words for a server of the wrong role (log readers and receivers know them)."""
    if target_session_attrs in ("read-write", "read-only"):
        return "session is read-only" if role.read_only else "session is not read-only"
    if role.in_recovery:
        return "server is in hot standby mode"
    return "server is not in hot standby mode"


def _until(deadline: float) -> float:
    """When to stop waiting on the watcher: the deadline, or now and then for a
    caller that waits without one (to ask whether it should go on)."""
    if deadline == math.inf:
        return time.monotonic() + _KEEP_WAITING_CHECK
    return deadline


class Connector:
    """Connects one alias to the first suitable server of its host list."""

    def __init__(
        self,
        *,
        alias: str,
        sender: type,
        driver: Driver,
        hosts: Sequence[Host],
        target_session_attrs: str,
        policy: FailoverPolicy,
        shuffle: bool = False,
        attempt_delay: float = 0.2,
    ) -> None:
        self.alias = alias
        self.sender = sender
        self.driver = driver
        self.hosts = tuple(hosts)
        self.target_session_attrs = target_session_attrs
        self.policy = policy
        self.shuffle = shuffle
        self.attempt_delay = attempt_delay
        #: The latest failure of each host (for a pool's waiting clients).
        self.last_failures: list[HostFailure] = []
        #: The last connect has not found a server yet, or gave up.
        self.failing = False
        #: ...because every host refused for good.
        self.refused_for_good = False
        #: The process's watcher of this host list, once a connect waited for one.
        self.watcher: Watcher | None = None

    # -- one attempt ------------------------------------------------------------------

    def attempt(self, host: Host, params: Mapping[str, Any]) -> Landing | HostFailure:
        """Connect to one host and learn its role; record what that says about it."""
        driver = self.driver
        recheck = self.policy.host_recheck
        began = time.monotonic()
        try:
            with fork_gate.inside():
                connection = driver.connect({**params, "host": host.host, "port": host.port})
        except driver.module.Error as exc:
            reason = driver.connect_failure_reason(exc)
            verdict = connect_verdict(reason, driver.is_connect_timeout(exc))
            if not verdict.final:  # a refusal of our credentials says nothing of the server
                host_status.record_down(host, recheck)
            return HostFailure(host, server_message(reason), verdict, exc)
        except Exception as exc:  # not the driver's: this host failed, not the caller
            host_status.record_down(host, recheck)
            return HostFailure(host, unexpected_failure(exc), Verdict.UNREACHABLE, exc)
        try:
            role = server_role(driver, connection) or _ask_role(driver, connection)
        except Exception as exc:  # the server went away at once
            driver.close_quietly(connection)
            host_status.record_down(host, recheck)
            if isinstance(exc, driver.module.Error):
                reason = driver.connect_failure_reason(exc)
            else:
                reason = unexpected_failure(exc)
            return HostFailure(host, reason, Verdict.UNREACHABLE, exc)
        host_status.record_role(host, role, recheck)
        return Landing(connection, host, role, began=began, ended=time.monotonic())

    def close_when_done(self, future: Future) -> None:
        """An attempt that lost the race: close its connection once it has one."""

        def close(done: Future) -> None:
            result = None if done.exception() else done.result()
            if isinstance(result, Landing):
                self.driver.close_quietly(result.connection)

        future.add_done_callback(close)

    # -- one pass over the hosts --------------------------------------------------------

    def walk(
        self,
        params: Mapping[str, Any],
        hosts: Sequence[Host],
        coordinator: Callable[[], Watcher] | None = None,
        first: Landing | HostFailure | None = None,
    ) -> _Walk:
        """Try ``hosts`` in order, overtaking silent ones; the first that suits wins.

        Every thread tries the host the status memory puts first (on the healthy
        path, the primary). Going on down the list is the search for a new server
        during a failover: with a ``coordinator``, one thread of the process
        searches, and the others leave the walk deferred, to wait for it.
        ``first``: what an attempt at one of ``hosts`` made beforehand found (the
        calling thread's own, see :meth:`_connect_known_host`).
        """
        target = self.target_session_attrs
        pending = deque(hosts)
        in_flight: dict[Future, Host] = {}
        failures: dict[Host, HostFailure] = {}
        fallback: Landing | None = None
        winner: Landing | None = None
        overtaken: set[Host] = set()
        leader: Watcher | None = None
        search_end: Future | None = None  # deferred to another thread's search

        def start_next() -> bool:
            nonlocal leader, search_end
            if coordinator is not None and leader is None and (in_flight or failures or fallback):
                watcher = coordinator()
                search_end = watcher.join_search()
                if search_end is not None:
                    return False
                leader = watcher
            host = pending.popleft()
            in_flight[workers.submit(self.attempt, host, params)] = host
            return True

        def collect(host: Host, result: Landing | HostFailure) -> None:
            nonlocal winner, fallback
            if isinstance(result, HostFailure):
                failures[host] = result
            elif result.role is None or suits(result.role, target):
                winner = result
            elif accepts_fallback(target) and fallback is None:
                fallback = result
            else:
                self.driver.close_quietly(result.connection)
                failures[host] = HostFailure(host, wrong_role_reason(target, result.role), None)

        if first is not None:
            pending.remove(first.host)
            collect(first.host, first)
        if winner is None and pending:
            start_next()
        try:
            # Deferred (another thread searches), the attempts in flight still count
            # (no new one starts), until that search ends: then the caller connects
            # to what it found, and a silent host in flight is not waited for.
            while in_flight and winner is None:
                if search_end is not None and search_end.done():
                    break
                overtake = bool(pending) and len(in_flight) < MAX_IN_FLIGHT and search_end is None
                done, _ = wait(
                    [*in_flight, search_end] if search_end is not None else in_flight,
                    timeout=self.attempt_delay if overtake else None,
                    return_when=FIRST_COMPLETED,
                )
                done.discard(search_end)
                if search_end is not None and search_end.done():
                    continue
                if not done:  # every attempt in flight is slow: try the next host beside
                    overtaken.update(in_flight.values())
                    start_next()
                    continue
                # Attempts that ended together: the preferred host first.
                for future in sorted(done, key=lambda f: hosts.index(in_flight[f])):
                    collect(in_flight.pop(future), future.result())
                    if winner is not None:
                        break
                    if pending and search_end is None:  # a host that answered at once: the next
                        start_next()
        finally:
            for future, host in in_flight.items():
                self.close_when_done(future)
                if winner is not None and host in overtaken:
                    # Silent while another server answered: last in line until it
                    # answers (its attempt, still running, records what it finds).
                    host_status.record_down(host, self.policy.host_recheck)
            if winner is None:
                winner = fallback
            elif fallback is not None:
                self.driver.close_quietly(fallback.connection)
            searching = None
            if leader is not None:
                hopeless = len(failures) == len(hosts) and all(f.final for f in failures.values())
                if winner is not None or hopeless or sys.exc_info()[0] is not None:
                    leader.done_leading(found=winner is not None, hopeless=hopeless)
                else:  # the search goes on: the caller hands it to the watcher
                    searching = leader
        failed = [failures[h] for h in hosts if h in failures]
        return _Walk(winner, failed, searching, search_end)

    # -- until a deadline -----------------------------------------------------------------

    def connect(
        self,
        params: Mapping[str, Any],
        deadline: float | None = None,
        keep_waiting: Callable[[], bool] = lambda: True,
    ) -> Landing:
        """A connection to a suitable server, waiting for one until ``deadline``.

        Raises the driver's OperationalError, one line per host, when every
        host refused for good, or at the deadline (default: ``retry_timeout``
        from now). ``deadline=None`` and ``keep_waiting`` let a pool's worker
        wait for as long as the pool is open.
        """
        params = {k: v for k, v in params.items() if k not in _WALK_KEYWORDS}
        policy = self.policy
        started = time.monotonic()
        if deadline is None:
            deadline = started + policy.retry_timeout
        refused: dict[Host, HostFailure] = {}
        passes = 0
        known: Landing | HostFailure | None = None
        search = active_search(self, params)
        if search is not None:
            # A failover is under way: no use trying before the search finds a server.
            logger.debug("database alias %r: waiting for the search under way", self.alias)
            searching, search_end = search
            searching.wait(_until(deadline), change=search_end)
        else:
            known = self._connect_known_host(params, started)
            if known is not None and known.suits:
                return known  # the healthy path
        while True:
            passes += 1
            candidates = [h for h in self.ordered_hosts() if h not in refused]
            walk = self.walk(params, candidates, lambda: watcher_for(self, params), known)
            known = None
            self._report_failures(walk.failures, passes)
            if walk.landing is not None:
                if passes > 1 or walk.failures:
                    forget_failures(self, params)  # they describe an outage now over
                self.failing = self.refused_for_good = False
                landing = walk.landing
                landing.passes, landing.elapsed = passes, time.monotonic() - started
                self._report_connected(landing)
                return landing
            watcher = watcher_for(self, params)
            watcher.record_failures(walk.failures)
            for failure in walk.failures:
                if failure.final:
                    refused[failure.host] = failure
            # What this thread saw, and what the process's other searches saw.
            latest = {**watcher.failures, **{f.host: f for f in walk.failures}}
            self.last_failures = [latest[h] for h in self.hosts if h in latest]
            self.failing = True
            elapsed = time.monotonic() - started
            cause = next((f.error for f in reversed(walk.failures) if f.error), None)
            if walk.deferred and time.monotonic() < deadline and keep_waiting():
                # Another thread searches the list: wait for what it (or the
                # watcher after it) finds.
                watcher.wait(_until(deadline), change=walk.search_end)
                continue
            if walk.searching is not None and (
                len(refused) == len(self.hosts)
                or time.monotonic() >= deadline
                or not keep_waiting()
            ):
                # Giving up: the followers see for themselves.
                walk.searching.done_leading(found=False, hopeless=True)
            if len(refused) == len(self.hosts):
                self.refused_for_good = True
                logger.error(
                    "database alias %r: every host refused the connection for good (%s)",
                    self.alias,
                    self._summary(self.last_failures),
                )
                raise self._error(passes, elapsed, self._REFUSED) from cause
            if time.monotonic() >= deadline or not keep_waiting():
                logger.error(
                    "database alias %r: giving up after %d attempt(s) in %.2fs",
                    self.alias,
                    passes,
                    elapsed,
                )
                raise self._error(passes, elapsed, "retry_timeout reached") from cause
            if passes == 1 or logger.isEnabledFor(logging.DEBUG):
                logger.log(
                    logging.WARNING if passes == 1 else logging.DEBUG,
                    "database alias %r: connection attempt %d failed after %.2fs (%s); "
                    "waiting for a suitable server",
                    self.alias,
                    passes,
                    elapsed,
                    self._summary(walk.failures),
                )
            # One watcher per process looks for a server on behalf of every waiting
            # thread; the last try lands on the deadline.
            watcher.wait(_until(deadline), hand_over=walk.searching is not None)

    def _connect_known_host(
        self, params: Mapping[str, Any], started: float
    ) -> Landing | HostFailure | None:
        """The healthy path: the first host answered lately with a role that suits.

        Connect to it in the calling thread, as Django's own backend does: no
        thread is woken and none waited for. A connection that suits is
        returned reported; anything else (a failure, another role) is what the
        first attempt of the pass that follows found. None: not tried (the
        memory knows no such host, or an attempt at it in another thread has
        gone unanswered for ``attempt_delay``: then the pass overtakes it). A
        host that hangs now holds up the connects already under way to it for
        ``connect_timeout``.
        """
        host = self.ordered_hosts()[0]
        if not host_status.suits(host, self.target_session_attrs):
            return None
        began = time.monotonic()
        since = _connecting_inline.get(host)
        if since is not None and began - since > self.attempt_delay:
            return None
        _connecting_inline[host] = began
        try:
            result = self.attempt(host, params)
        finally:
            if _connecting_inline.get(host) == began:
                _connecting_inline.pop(host, None)
        if isinstance(result, HostFailure):
            return result
        if result.role is not None and not suits(result.role, self.target_session_attrs):
            return result
        result.suits = True
        if self.failing:
            forget_failures(self, params)  # they describe an outage now over
            self.failing = self.refused_for_good = False
        result.elapsed = time.monotonic() - started
        self._report_connected(result)
        return result

    def ordered_hosts(self) -> tuple[Host, ...]:
        if self.policy.host_recheck > 0:
            return host_status.order(self.hosts, self.target_session_attrs, self.shuffle)
        if self.shuffle:
            return tuple(random.sample(self.hosts, len(self.hosts)))
        return self.hosts

    # -- reporting ---------------------------------------------------------------------

    @staticmethod
    def _summary(failures: Sequence[HostFailure]) -> str:
        return "; ".join(f"{f.host} {f.reason}" for f in failures) or "no host tried"

    _REFUSED = "not retried: waiting will not fix it"

    def give_up_error(self, elapsed: float) -> Exception:
        """The error for a caller that waited ``elapsed`` seconds for a pool's connection."""
        outcome = self._REFUSED if self.refused_for_good else "retry_timeout reached"
        return self._error(None, elapsed, outcome)

    def _error(self, passes: int | None, elapsed: float, outcome: str) -> Exception:
        lines = [f"  {f.host}: {f.reason}" for f in self.last_failures]
        return self.driver.operational_error(
            f"could not connect to database alias {self.alias!r} "
            f"(target_session_attrs={self.target_session_attrs}) after "
            + (f"{passes} attempt(s) in " if passes else "")
            + f"{elapsed:.1f}s, {outcome}:\n"
            + "\n".join(lines)
        )

    def _report_failures(self, failures: Sequence[HostFailure], attempt: int) -> None:
        for failure in failures:
            logger.debug(
                "database alias %r: attempt %d: %s failed: %s",
                self.alias,
                attempt,
                failure.host,
                failure.reason,
            )
            signals.host_attempt_failed.send(
                sender=self.sender,
                alias=self.alias,
                host=failure.host.host,
                port=failure.host.port,
                reason=failure.reason,
                attempt=attempt,
            )

    def _report_connected(self, landing: Landing) -> None:
        waited = landing.passes > 1 or landing.elapsed > self.attempt_delay
        if waited or logger.isEnabledFor(logging.DEBUG):
            role = landing.role.value if landing.role else None
            logger.log(
                logging.INFO if waited else logging.DEBUG,
                "database alias %r: connected to %s (%s) after %d attempt(s) in %.2fs",
                self.alias,
                landing.host,
                role or "role not reported",
                landing.passes,
                landing.elapsed,
            )
        if not signals.connection_established.receivers:
            return  # every connect comes here: no keyword arguments built for nobody
        role = landing.role.value if landing.role else None
        signals.connection_established.send(
            sender=self.sender,
            alias=self.alias,
            host=landing.host.host,
            port=landing.host.port,
            role=role,
            attempts=landing.passes,
            elapsed=landing.elapsed,
        )
