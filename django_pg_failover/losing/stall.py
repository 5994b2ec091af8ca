"""A call that waits on a server that stopped answering is given up, never left hanging.

A frozen server (SIGSTOP, a stuck VM whose kernel still acknowledges TCP)
makes a query, a COMMIT or a health check wait forever: keepalives and
``tcp_user_timeout`` never fire while the kernel answers. Like pgjdbc's
``socketTimeout``, but without cutting a long query short:

- every call the backend makes to the server is noted on the wrapper when it
  starts and when it ends (the error wrapper Django puts around each call,
  and the health check): a depth counter and a call number, written in
  place. No object, no lock, no clock read, no call of any kind per query:
  the healthy path pays a few attribute writes;
- one watchdog thread per process knows the wrappers with an open, watched
  connection (they sign up when they connect) and looks at them every
  quarter of ``stall_timeout``. A call it finds in flight under the same
  number for ``stall_timeout`` has waited at least that long (at most a
  quarter more). Then it checks the call's *session*, not just its address
  (:func:`check_session`): a new connection to the call's host, bounded
  by ``connect_timeout``, which looks the session up by its process id and
  start (``pg_stat_activity``).

What the check finds decides:

- the session is there (the server is working on it, or one of its
  processes is stuck alone): left alone, checked again after another
  ``stall_timeout``. A long query is the server's business
  (``statement_timeout`` is the tool for it);
- the server answers, but the session is not there: the address now leads
  to another server (a proxy, a virtual IP or a DNS name moved to the new
  primary), or the server restarted. The call is given up at once;
- the server answers in a way that shows it is up but cannot say more (too
  many clients, shutting down, our credentials refused, a pooler in
  between whose process ids are its own): left alone;
- the server does not answer a new connection (no answer, refused): given
  up, unless the watchdog saw other calls of this process on that server
  complete since the stalled call began (then only its postmaster is stuck:
  left alone);
- the check could not even try (the name did not resolve, no socket could
  be made): nothing was learned about the server. Left alone and checked
  again; the call is given up only once no check could be made for
  ``retry_timeout``.

A call given up has its socket shut down: the call raises, the connection
counts as lost, and the next use outside an atomic block connects anew.

The watchdog and the calling thread share no lock. A call is known by its
number: the watchdog gives up the call it checked only if that call is still
the one in flight, and the calling thread, when its call fails, reads whether
the watchdog gave that very call up (to say so in the error). Numbers count
to 255 and start again (Python keeps one object for each small number: a
call allocates nothing). A busy connection could show the same number at
every look of the watchdog by chance (1 in 256 per look, four looks in a
row): that costs one check of a live session, never a call given up.
"""

from __future__ import annotations

import enum
import functools
import logging
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from django_pg_failover.background import fork_gate, workers
from django_pg_failover.connecting import password as with_password
from django_pg_failover.connecting.attempt import one_host_params
from django_pg_failover.connecting.verdicts import (
    Verdict,
    client_side,
    connect_verdict,
    server_message,
    unexpected_failure,
)
from django_pg_failover.settings.hosts import Host
from django_pg_failover.settings.options import DEFAULT_CONNECT_TIMEOUT
from django_pg_failover.settings.password import PasswordProviderError

if TYPE_CHECKING:
    from django_pg_failover.drivers import Driver
    from django_pg_failover.settings.conf import FailoverSettings
    from django_pg_failover.settings.policy import FailoverPolicy

logger = logging.getLogger("django_pg_failover")

# Without a watched connection for this long, the watchdog thread ends (the next
# connection starts a new one).
_IDLE_EXIT = 60.0


class Watched(Protocol):
    """What the stall watch needs of a database wrapper (see ``base.py``)."""

    alias: str
    driver: Driver
    connection: Any
    server: Host | None
    server_fd: int | None
    #: The session's process id, and when the attempt that opened it began and ended.
    server_session: tuple[int, float, float] | None
    connected_stall_timeout: float | None
    call_depth: int
    call_number: int
    call_given_up: tuple[int, str] | None

    @property
    def failover_policy(self) -> FailoverPolicy: ...

    @property
    def failover_settings(self) -> FailoverSettings: ...

    def failover_connection_params(self) -> dict[str, Any]: ...


class StallWatch:
    """The process's watchdog over calls in flight."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        #: The wrappers signed up, by id, until they are gone (weak references).
        self._wrappers: dict[int, weakref.ref[Watched]] = {}
        #: Per wrapper, the call seen in flight (its number) and when it is due:
        #: ``stall_timeout`` after it was first seen, later again once a check
        #: left it alone, never while a check of it runs.
        self._seen: dict[int, tuple[int, float]] = {}
        #: Per wrapper, the stalled call (its number), when it was first seen,
        #: and since when no check could be made (None: the last one could).
        self._stalled: dict[int, tuple[int, float, float | None]] = {}
        #: Per wrapper, the call number at the last look; per server, when a
        #: call on it was last seen to end (its sessions answer).
        self._numbers: dict[int, int] = {}
        self._progress: dict[Host, float] = {}
        self._thread: threading.Thread | None = None
        #: How long the watchdog sleeps, as it went to sleep (0 while it is awake).
        self._period = 0.0
        #: The shortest stall_timeout of the connections signed up so far.
        self._shortest = _IDLE_EXIT * 4

    def after_fork_in_child(self) -> None:
        self._reset()

    # -- the calling thread ---------------------------------------------------------

    def watch(self, wrapper: Watched) -> None:
        """A watched connection opened (once per connection, not per call)."""
        stall_timeout = wrapper.connected_stall_timeout
        if stall_timeout is None:
            return
        if (
            self._thread is not None
            and id(wrapper) in self._wrappers
            and stall_timeout >= self._period * 4  # (see _period())
        ):
            # Signed up already (a wrapper stays until it is gone), watched already:
            # the common case of a pool's checkout, and of a connect per request.
            return
        with self._lock:
            key = id(wrapper)
            self._shortest = min(self._shortest, stall_timeout)
            if key not in self._wrappers:
                self._wrappers[key] = weakref.ref(wrapper, functools.partial(self._forget, key))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="pg-failover-stall-watch", daemon=True
                )
                self._thread.start()
            elif stall_timeout < self._period * 4:  # (see _period())
                self._wake.notify()  # asleep for longer than this connection allows

    def _forget(self, key: int, reference: object) -> None:
        """A wrapper signed up is gone (its weak reference's callback)."""
        self._wrappers.pop(key, None)

    @contextmanager
    def guard(self, wrapper: Watched) -> Iterator[None]:
        """For a call Django's error wrapper does not surround (the health check)."""
        watched = wrapper.connected_stall_timeout is not None
        if watched:
            if not wrapper.call_depth:
                # Small numbers only: Python keeps one object of each (nothing allocated).
                wrapper.call_number = (wrapper.call_number + 1) & 255
            wrapper.call_depth += 1
        try:
            yield
        finally:
            if watched and wrapper.call_depth:
                wrapper.call_depth -= 1

    @staticmethod
    def given_up(wrapper: Watched) -> str | None:
        """After a call failed: why the watchdog gave it up, if it did."""
        record = wrapper.call_given_up
        if record is None:
            return None
        wrapper.call_given_up = None
        number, reason = record
        return reason if number == wrapper.call_number else None

    # -- the watchdog -----------------------------------------------------------------

    def _watch(self) -> None:
        try:
            self._watch_calls()
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None  # the next connection starts a new watchdog

    def _watch_calls(self) -> None:
        idle_since = time.monotonic()
        while True:
            with self._lock:
                now = time.monotonic()
                due, period = self._due_calls(now)
                if period < math.inf:
                    idle_since = now
                elif now - idle_since > _IDLE_EXIT:
                    return
                if not due:
                    # Without a watched connection, the period of the shortest
                    # stall_timeout signed up still: a process that connects per
                    # request (or checks out of a pool) finds the watchdog asleep
                    # for no longer than its connection allows (nothing to wake).
                    self._period = min(period, _period(self._shortest))
                    self._wake.wait(self._period)
                    self._period = 0.0  # awake: a new connection is seen at the next look
                    continue
            for wrapper, number in due:
                workers.submit(self._check, wrapper, number)

    def _due_calls(self, now: float) -> tuple[list[tuple[Watched, int]], float]:
        """The calls that have waited long enough (marked as being checked), and how
        soon to look again (the lock held)."""
        due: list[tuple[Watched, int]] = []
        period = math.inf
        seen: dict[int, tuple[int, float]] = {}
        numbers: dict[int, int] = {}
        for reference in list(self._wrappers.values()):
            wrapper = reference()
            if wrapper is None:
                continue
            stall_timeout = wrapper.connected_stall_timeout
            if stall_timeout is None or wrapper.connection is None:
                continue  # signed up still: its next connection needs no lock
            period = min(period, _period(stall_timeout))
            key, number = id(wrapper), wrapper.call_number
            numbers[key] = number
            if self._numbers.get(key, number) != number and wrapper.server is not None:
                self._progress[wrapper.server] = now  # a call on that server ended
            if not wrapper.call_depth:
                continue
            before = self._seen.get(key)
            when = before[1] if before is not None and before[0] == number else now + stall_timeout
            if when <= now:
                due.append((wrapper, number))
                when = math.inf  # being checked
            seen[key] = (number, when)
        self._seen = seen
        self._numbers = numbers
        self._stalled = {k: v for k, v in self._stalled.items() if seen.get(k, (-1,))[0] == v[0]}
        return due, period

    def _check(self, wrapper: Watched, number: int) -> None:
        """Is the session of a call that has waited ``stall_timeout`` still alive?"""
        host, fd, stall_timeout = wrapper.server, wrapper.server_fd, wrapper.connected_stall_timeout
        if host is None or fd is None or stall_timeout is None:
            return
        try:
            finding, detail = check_session(wrapper, host)
        except Exception as exc:  # a bug must not leave the call unwatched
            finding, detail = Finding.UNKNOWN, f"the check failed: {exc}"
            logger.exception("database alias %r: session check failed: %s", wrapper.alias, exc)
        key = id(wrapper)
        with self._lock:
            if not (wrapper.call_depth and wrapper.call_number == number):
                return  # the call ended meanwhile: its connection is left alone
            now = time.monotonic()
            _, first_seen, unknown_since = self._stalled.get(
                key, (number, now - stall_timeout, None)
            )
            if finding is Finding.UNKNOWN:
                unknown_since = now if unknown_since is None else unknown_since
                if now - unknown_since >= wrapper.failover_policy.retry_timeout:
                    finding = Finding.SILENT
                    detail = f"no check could reach it for {now - unknown_since:.1f}s ({detail})"
            else:
                unknown_since = None
            self._stalled[key] = (number, first_seen, unknown_since)
            if finding is Finding.SILENT and self._progress.get(host, -math.inf) > first_seen:
                finding = Finding.ALIVE
                detail = f"its other sessions answer ({detail}: its postmaster alone is stuck)"
            if finding in (Finding.ALIVE, Finding.UNKNOWN):
                self._seen[key] = (number, now + stall_timeout)
                logger.info(
                    "database alias %r: a call has waited over %gs on %s: %s; left alone",
                    wrapper.alias,
                    stall_timeout,
                    host,
                    detail,
                )
                return
            reason = f"{host} did not answer for over {stall_timeout:g}s (stall_timeout): {detail}"
            # Written before the socket is shut down: the calling thread, woken by
            # it, finds why.
            wrapper.call_given_up = (number, reason)
            _shut_down(fd)
        logger.warning("database alias %r: giving up a call: %s", wrapper.alias, reason)


class Finding(enum.Enum):
    """What a check found of a stalled call's session (see the module's docstring)."""

    ALIVE = "alive"
    GONE = "gone"
    SILENT = "silent"
    UNKNOWN = "unknown"


# The server's own process id, and the age of the session with the stalled call's id.
_SESSION_SQL = (
    "SELECT pg_backend_pid(), (SELECT extract(epoch FROM now() - backend_start)::float8 "
    "FROM pg_stat_activity WHERE pid = %s)"
)
# The session's start, as the server clock counts from it, may differ from the
# client's count by this much (clock rates, round trips).
_AGE_TOLERANCE = 1.0


def check_session(wrapper: Watched, host: Host) -> tuple[Finding, str]:
    """A new connection to ``host`` looks for the session of the wrapper's connection."""
    driver = wrapper.driver
    params = wrapper.failover_connection_params()
    params = one_host_params(params, host, params.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT))
    try:
        with fork_gate.inside():
            connection = with_password.connect(driver, params, wrapper.failover_settings.password)
    except Exception as exc:
        if isinstance(exc, PasswordProviderError):
            return Finding.UNKNOWN, f"the check could not try ({exc.reason})"
        if isinstance(exc, driver.module.Error):
            reason = driver.connect_failure_reason(exc)
            verdict = connect_verdict(reason, driver.is_connect_timeout(exc))
        else:
            reason, verdict = unexpected_failure(exc), Verdict.UNREACHABLE
        if client_side(reason):
            return Finding.UNKNOWN, f"the check could not try ({reason})"
        if verdict is Verdict.UNREACHABLE:
            return Finding.SILENT, f"a new connection to it failed: {reason}"
        return Finding.ALIVE, f"it answers ({server_message(reason)})"
    try:
        session = wrapper.server_session
        if session is None:
            return Finding.ALIVE, "it answers"
        pid, began, ended = session
        with connection.cursor() as cursor:
            cursor.execute(_SESSION_SQL, [pid])
            own_pid, age = cursor.fetchone()
        if own_pid != driver.backend_pid(connection):
            return Finding.ALIVE, "it answers (through a pooler: its sessions cannot be looked up)"
        now = time.monotonic()
        if age is not None and now - ended - _AGE_TOLERANCE <= age <= now - began + _AGE_TOLERANCE:
            return Finding.ALIVE, f"its session (process {pid}) is there"
        return Finding.GONE, (
            f"a server answers there, but without the call's session (process {pid}): "
            "the address leads to another server now, or the server restarted"
        )
    except driver.module.Error as exc:
        return (
            Finding.SILENT,
            f"a new connection to it failed: {driver.connect_failure_reason(exc)}",
        )
    finally:
        driver.close_quietly(connection)


def _period(stall_timeout: float) -> float:
    """How often the watchdog looks at calls: a stalled one is found between
    ``stall_timeout`` and a quarter more."""
    return stall_timeout / 4


def _shut_down(fd: int) -> None:
    """Wake the thread blocked on this socket: it reads the end of the stream.

    The socket object borrows the descriptor and gives it back (no ``dup()``:
    a process out of descriptors must still be able to give a call up).
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.detach()


#: The process's watchdog.
stall_watch = StallWatch()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=stall_watch.after_fork_in_child)
