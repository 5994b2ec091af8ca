"""Opening a connection: passes over the host list until a suitable server, or a deadline.

:class:`Connector` connects one alias:

- **the healthy path**: when the host the memory puts first answered lately
  with a role that suits, it connects to it in the calling thread, as
  Django's own backend does: no thread woken, none waited for
  (:meth:`Connector._connect_known_host`);
- otherwise, and after any failure there, **passes** over the list
  (:mod:`.race`), the calling thread's own attempt counting as the first of
  the first pass;
- between passes it **waits** for the process's search of the list
  (:mod:`.search`), until ``retry_timeout``: a host that refused for good is
  not tried again in that call, and when every host has refused for good the
  error is raised at once;
- a connect **once** makes one pass and waits for nothing: for a question
  that can be asked again later (Django's ``pg_version`` in the system checks,
  which Django 6.1 asks of every alias: ``manage.py check`` with every host
  down must not wait ``retry_timeout`` per alias).
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django_pg_failover import metrics, signals
from django_pg_failover.background import workers
from django_pg_failover.connecting import search
from django_pg_failover.connecting.attempt import HostFailure, Landing, Outcome, attempt
from django_pg_failover.connecting.memory import host_status
from django_pg_failover.connecting.race import PassResult, Race
from django_pg_failover.connecting.roles import suits
from django_pg_failover.connecting.trust import QUERY, verified_role
from django_pg_failover.drivers import Driver
from django_pg_failover.settings.hosts import Host
from django_pg_failover.settings.password import PasswordProvider
from django_pg_failover.settings.policy import FailoverPolicy

logger = logging.getLogger("django_pg_failover")

# A pool's worker waits without a deadline: it looks up from the watcher this often.
_KEEP_WAITING_CHECK = 1.0

#: Per host, when a connect attempt in a calling thread began (the last of them):
#: one unanswered for ``attempt_delay`` sends the next connects on a pass instead.
_connecting_inline: dict[Host, float] = {}

#: Host lists (with their target) on which a connect of this process found a suitable
#: server. The healthy path adds nothing: it runs only on a host the memory knows
#: suits, which a connect (or the watcher) that found it has recorded.
_reached: set[tuple[tuple[Host, ...], str]] = set()

# Connection keywords each attempt sets itself.
HOST_KEYWORDS = ("host", "port", "hostaddr", "target_session_attrs", "load_balance_hosts")


@dataclass
class _Call:
    """One call of :meth:`Connector.connect`: how far it has come."""

    params: dict[str, Any]
    started: float
    deadline: float
    keep_waiting: Callable[[], bool]
    #: Why the call gives up when out of time.
    out_of_time: str = "retry_timeout reached"
    passes: int = 0
    #: Hosts that refused for good: not tried again in this call.
    refused: dict[Host, HostFailure] = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def may_wait(self) -> bool:
        return time.monotonic() < self.deadline and self.keep_waiting()

    def until(self) -> float:
        """When to stop waiting on the watcher: the deadline, or now and then for a
        caller that waits without one (to ask whether it should go on)."""
        if self.deadline == math.inf:
            return time.monotonic() + _KEEP_WAITING_CHECK
        return self.deadline


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
        password: PasswordProvider | None = None,
    ) -> None:
        self.alias = alias
        self.sender = sender
        self.driver = driver
        self.hosts = tuple(hosts)
        self.target_session_attrs = target_session_attrs
        self.policy = policy
        self.shuffle = shuffle
        self.attempt_delay = attempt_delay
        #: The password provider, asked at every attempt (:mod:`.password`); None: none.
        self.password = password
        #: role_check="query": every new connection's role is asked (connecting.trust).
        self.ask_every_host = policy.role_check == QUERY
        #: The latest failure of each host (for a pool's waiting clients).
        self.last_failures: list[HostFailure] = []
        #: The last connect has not found a server yet, or gave up.
        self.failing = False
        #: ...because every host refused for good.
        self.refused_for_good = False
        #: The process's watcher of this host list, once a connect waited for one.
        self.watcher: search.Watcher | None = None
        #: ``search.generation`` when the process's watchers last had none of this
        #: list: the look is not repeated on every connect (a process whose other
        #: host lists waited once would pay it on each).
        self._no_watcher_in = -1

    def attempt(self, host: Host, params: Mapping[str, Any]) -> Outcome:
        """One attempt at ``host`` (:func:`.attempt.attempt`); its role asked when
        ``role_check`` says so or the host's reports were contradicted (:mod:`.trust`)."""
        # The rule of trust.must_ask(), inline: every connect runs it.
        ask = self.ask_every_host or host in host_status.distrusted
        return attempt(self.driver, host, params, self.policy.host_recheck, self.password, ask)

    @property
    def reached_before(self) -> bool:
        """This process has found a suitable server of the list before."""
        return (self.hosts, self.target_session_attrs) in _reached or any(
            host_status.suits(host, self.target_session_attrs) for host in self.hosts
        )

    def ordered_hosts(self) -> tuple[Host, ...]:
        if self.policy.host_recheck > 0:
            return host_status.order(self.hosts, self.target_session_attrs, self.shuffle)
        if self.shuffle:
            return tuple(random.sample(self.hosts, len(self.hosts)))
        return self.hosts

    # -- until a deadline -----------------------------------------------------------------

    def connect(
        self,
        params: Mapping[str, Any],
        deadline: float | None = None,
        keep_waiting: Callable[[], bool] = lambda: True,
        once: bool = False,
    ) -> Landing:
        """A connection to a suitable server, waiting for one until ``deadline``.

        Raises the driver's OperationalError, one line per host, when every
        host refused for good, or at the deadline (default: ``retry_timeout``
        from now). ``deadline=math.inf`` and ``keep_waiting`` let a pool's
        worker wait for as long as the pool is open. ``once``: one pass, no
        wait (the deadline is now).
        """
        started = time.monotonic()
        if once:
            deadline = started
        elif deadline is None:
            deadline = started + self.policy.retry_timeout
        call = _Call(
            {k: v for k, v in params.items() if k not in HOST_KEYWORDS},
            started,
            deadline,
            keep_waiting,
            "no suitable host in one pass" if once else "retry_timeout reached",
        )
        first: Outcome | None = None
        watcher, search_end = self._search_under_way(call.params)
        if watcher is not None:
            # A failover is under way: no use trying before the search finds a server.
            logger.debug("database alias %r: waiting for the search under way", self.alias)
            self._wait(watcher, call.until(), change=search_end)
        else:
            first = self._connect_known_host(call.params, started)
            if isinstance(first, Landing) and first.suits:
                return first  # the healthy path
        while True:
            result = self._pass(call, first)
            first = None
            if result.landing is not None:
                return self._landed(call, result)
            watcher = self._note_failures(call, result)
            if result.deferred and call.may_wait():
                # Another thread searches the list: wait for what it (or the
                # watcher after it) finds.
                self._wait(watcher, call.until(), change=result.search_end)
                continue
            self._give_up_if_hopeless(call, result)
            # One watcher per process looks for a server on behalf of every waiting
            # thread; the last try lands on the deadline.
            self._wait(watcher, call.until(), hand_over=result.searching is not None)

    def _wait(self, watcher: search.Watcher, until: float, **how: Any) -> None:
        """Sleep until the watcher finds a server (:meth:`.search.Watcher.wait`), counted
        for the metrics per alias (a watcher may serve several aliases of one list)."""
        metrics.waiting(self.alias, 1)
        try:
            watcher.wait(until, **how)
        finally:
            metrics.waiting(self.alias, -1)

    def _connect_known_host(self, params: Mapping[str, Any], started: float) -> Outcome | None:
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
            outcome = self.attempt(host, params)
        finally:
            if _connecting_inline.get(host) == began:
                _connecting_inline.pop(host, None)
        if isinstance(outcome, HostFailure):
            return outcome
        if outcome.role is not None and not suits(outcome.role, self.target_session_attrs):
            return outcome
        outcome.suits = True
        if self.failing:
            self._forget_failures(params)  # they describe an outage now over
            self.failing = self.refused_for_good = False
            metrics.connected(self.alias, host)
        elif self.alias in metrics.outages:
            # A loss of this alias opened an outage, and the memory already knew the
            # new server (another alias or the watcher found it): this connect ends it.
            metrics.connected(self.alias, host)
        outcome.elapsed = time.monotonic() - started
        self._report_connected(outcome)
        return outcome

    def _pass(self, call: _Call, first: Outcome | None) -> PassResult:
        call.passes += 1
        race = Race(
            [h for h in self.ordered_hosts() if h not in call.refused],
            target_session_attrs=self.target_session_attrs,
            attempt_delay=self.attempt_delay,
            start=lambda host: workers.submit(self.attempt, host, call.params),
            close=self.driver.close_quietly,
            mark_down=functools.partial(host_status.record_down, recheck=self.policy.host_recheck),
            coordinator=lambda: self._watcher(call.params),
        )
        result = race.run(first)
        self._report_failures(result.failures, call.passes)
        return result

    def _landed(self, call: _Call, result: PassResult) -> Landing:
        if call.passes > 1 or result.failures:
            self._forget_failures(call.params)  # they describe an outage now over
        self.failing = self.refused_for_good = False
        _reached.add((self.hosts, self.target_session_attrs))
        landing = result.landing
        assert landing is not None
        landing.passes, landing.elapsed = call.passes, call.elapsed()
        metrics.connected(self.alias, landing.host)
        self._report_connected(landing)
        return landing

    def _note_failures(self, call: _Call, result: PassResult) -> search.Watcher:
        """A pass found no server: remember why, for this call and for the process."""
        watcher = self._watcher(call.params)
        watcher.record_failures(result.failures)
        for failure in result.failures:
            if failure.final:
                call.refused[failure.host] = failure
        # What this thread saw, and what the process's other searches saw.
        latest = {**watcher.failures, **{f.host: f for f in result.failures}}
        self.last_failures = [latest[h] for h in self.hosts if h in latest]
        self.failing = True
        metrics.no_server(self.alias)
        return watcher

    def _give_up_if_hopeless(self, call: _Call, result: PassResult) -> None:
        """Raise when every host refused for good or the deadline passed; else log."""
        every_host_refused = len(call.refused) == len(self.hosts)
        out_of_time = not call.may_wait()
        if result.searching is not None and (every_host_refused or out_of_time):
            # Giving up: the followers see for themselves.
            result.searching.done_leading(found=False, hopeless=True)
        cause = next((f.error for f in reversed(result.failures) if f.error), None)
        elapsed = call.elapsed()
        if every_host_refused:
            self.refused_for_good = True
            logger.error(
                "database alias %r: every host refused the connection for good (%s)",
                self.alias,
                self._summary(self.last_failures),
            )
            raise self._error(call.passes, elapsed, self._REFUSED) from cause
        if out_of_time:
            logger.error(
                "database alias %r: giving up after %d attempt(s) in %.2fs",
                self.alias,
                call.passes,
                elapsed,
            )
            raise self._error(call.passes, elapsed, call.out_of_time) from cause
        if call.passes == 1 or logger.isEnabledFor(logging.DEBUG):
            logger.log(
                logging.WARNING if call.passes == 1 else logging.DEBUG,
                "database alias %r: connection attempt %d failed after %.2fs (%s); "
                "waiting for a suitable server",
                self.alias,
                call.passes,
                elapsed,
                self._summary(result.failures),
            )

    # -- the process's search of this list (:mod:`.search`) ---------------------------

    def _key(self, params: Mapping[str, Any]) -> tuple:
        """One watcher per host list, target, database and identity."""
        return (
            self.hosts,
            self.target_session_attrs,
            params.get("dbname"),
            params.get("user"),
            params.get("password"),
            self.password.identity if self.password is not None else None,
        )

    def _watcher(self, params: Mapping[str, Any]) -> search.Watcher:
        if self.watcher is None or self.watcher.defunct:
            hosts = search.HostList(
                alias=self.alias,
                hosts=self.hosts,
                target_session_attrs=self.target_session_attrs,
                policy=self.policy,
                attempt=functools.partial(self._attempt_with, dict(params)),
                ask=functools.partial(verified_role, self.driver),
                close=self.driver.close_quietly,
            )
            # Remembered (one alias's settings in one thread: one key), for the
            # question every connect asks (_search_under_way()).
            self.watcher = search.watcher_for(self._key(params), hosts)
        return self.watcher

    def _attempt_with(self, params: Mapping[str, Any], host: Host) -> Outcome:
        """The watcher's attempts: on the failover path a round trip is cheap, and the
        role it finds is what wakes every waiter, so it is asked, never believed."""
        return attempt(self.driver, host, params, self.policy.host_recheck, self.password, ask=True)

    def _search_under_way(
        self, params: Mapping[str, Any]
    ) -> tuple[search.Watcher, Any] | tuple[None, None]:
        watcher = self.watcher
        if watcher is None or watcher.defunct:  # defunct: the parent's, before a fork
            # Another connector (another thread's wrapper) of the same list may have.
            generation = search.generation
            if generation == self._no_watcher_in:  # looked in vain, nothing new since
                return None, None
            watcher = search.known_watcher(self._key(params))
            if watcher is None:
                self._no_watcher_in = generation
                return None, None
            self.watcher = watcher
        end = search.search_under_way(watcher)
        return (watcher, end) if end is not None else (None, None)

    def _forget_failures(self, params: Mapping[str, Any]) -> None:
        """A connection was made: the failures remembered for the error message are past."""
        watcher = self.watcher
        if watcher is None or watcher.defunct:
            watcher = search.known_watcher(self._key(params))
        if watcher is not None:
            watcher.failures.clear()

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
            metrics.connect_attempt_failed(self.alias, failure.host, failure.verdict)

    def _report_connected(self, landing: Landing) -> None:
        waited = landing.passes > 1 or landing.elapsed > self.attempt_delay
        if waited or logger.isEnabledFor(logging.DEBUG):
            logger.log(
                logging.INFO if waited else logging.DEBUG,
                "database alias %r: connected to %s (%s) after %d attempt(s) in %.2fs",
                self.alias,
                landing.host,
                landing.role.value if landing.role else "role not reported",
                landing.passes,
                landing.elapsed,
            )
        if not signals.connection_established.receivers:
            return  # every connect comes here: no keyword arguments built for nobody
        signals.connection_established.send(
            sender=self.sender,
            alias=self.alias,
            host=landing.host.host,
            port=landing.host.port,
            role=landing.role.value if landing.role else None,
            attempts=landing.passes,
            elapsed=landing.elapsed,
        )
