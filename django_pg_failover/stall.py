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
  quarter more). Then it asks whether the call's server is still alive: a new
  connection to it, bounded by ``connect_timeout``;
- a server that answers is left alone (a long query is the server's business:
  ``statement_timeout`` is the tool for it), and asked again after another
  ``stall_timeout``; a server that does not answer has the call's socket shut
  down: the call raises, the connection counts as lost, and the next use
  outside an atomic block connects anew.

The watchdog and the calling thread share no lock. A call is known by its
number: the watchdog gives up the call it checked only if that call is still
the one in flight, and the calling thread, when its call fails, reads whether
the watchdog gave that very call up (to say so in the error). Numbers count
to 255 and start again (Python keeps one object for each small number: a
call allocates nothing). A busy connection could show the same number at
every look of the watchdog by chance (1 in 256 per look, four looks in a
row): that costs one check of a server that answers, never a call given up.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .background import workers

if TYPE_CHECKING:
    from .base import DatabaseWrapper

logger = logging.getLogger("django_pg_failover")

# Without a watched connection for this long, the watchdog thread ends (the next
# connection starts a new one).
_IDLE_EXIT = 60.0


class StallWatch:
    """The process's watchdog over calls in flight."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._wrappers: weakref.WeakSet[DatabaseWrapper] = weakref.WeakSet()
        #: Per wrapper, the call seen in flight (its number) and when it is due:
        #: ``stall_timeout`` after it was first seen, later again once a check
        #: left it alone, never while a check of it runs.
        self._seen: dict[int, tuple[int, float]] = {}
        self._thread: threading.Thread | None = None
        #: The watchdog's period, as it went to sleep.
        self._period = math.inf

    def after_fork_in_child(self) -> None:
        self._reset()

    # -- the calling thread ---------------------------------------------------------

    def watch(self, wrapper: DatabaseWrapper) -> None:
        """A watched connection opened (once per connection, not per call)."""
        stall_timeout = wrapper.connected_stall_timeout
        if stall_timeout is None:
            return
        with self._lock:
            self._wrappers.add(wrapper)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="pg-failover-stall-watch", daemon=True
                )
                self._thread.start()
            elif stall_timeout < self._period * 4:  # (see _period())
                self._wake.notify()  # asleep for longer than this connection allows

    @contextmanager
    def guard(self, wrapper: DatabaseWrapper) -> Iterator[None]:
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
    def given_up(wrapper: DatabaseWrapper) -> str | None:
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
                    self._period = min(period, _IDLE_EXIT)
                    self._wake.wait(self._period)
                    self._period = math.inf
                    continue
            for wrapper, number in due:
                workers.submit(self._check, wrapper, number)

    def _due_calls(self, now: float) -> tuple[list[tuple[DatabaseWrapper, int]], float]:
        """The calls that have waited long enough (marked as being checked), and how
        soon to look again (the lock held)."""
        due: list[tuple[DatabaseWrapper, int]] = []
        period = math.inf
        seen: dict[int, tuple[int, float]] = {}
        for wrapper in list(self._wrappers):
            stall_timeout = wrapper.connected_stall_timeout
            if stall_timeout is None or wrapper.connection is None:
                self._wrappers.discard(wrapper)
                continue
            period = min(period, _period(stall_timeout))
            if not wrapper.call_depth:
                continue
            key, number = id(wrapper), wrapper.call_number
            before = self._seen.get(key)
            when = before[1] if before is not None and before[0] == number else now + stall_timeout
            if when <= now:
                due.append((wrapper, number))
                when = math.inf  # being checked
            seen[key] = (number, when)
        self._seen = seen
        return due, period

    def _check(self, wrapper: DatabaseWrapper, number: int) -> None:
        """Is the server of a call that has waited ``stall_timeout`` still alive?"""
        host, fd, stall_timeout = wrapper.server, wrapper.server_fd, wrapper.connected_stall_timeout
        if host is None or fd is None or stall_timeout is None:
            return
        try:
            problem = wrapper.connector.probe(host, wrapper.get_connection_params())
        except Exception as exc:  # a bug must not leave the call unwatched
            problem = None
            logger.exception("database alias %r: liveness check failed: %s", wrapper.alias, exc)
        with self._lock:
            if not (wrapper.call_depth and wrapper.call_number == number):
                return  # the call ended meanwhile: its connection is left alone
            if problem is None:
                self._seen[id(wrapper)] = (number, time.monotonic() + stall_timeout)
                logger.info(
                    "database alias %r: a call has waited over %gs on %s, which answers: "
                    "left alone",
                    wrapper.alias,
                    stall_timeout,
                    host,
                )
                return
            reason = (
                f"{host} did not answer for over {stall_timeout:g}s (stall_timeout) "
                f"and a new connection to it failed: {problem}"
            )
            # Written before the socket is shut down: the calling thread, woken by
            # it, finds why.
            wrapper.call_given_up = (number, reason)
            _shut_down(fd)
        logger.warning("database alias %r: giving up a call: %s", wrapper.alias, reason)


def _period(stall_timeout: float) -> float:
    """How often the watchdog looks at calls: a stalled one is found between
    ``stall_timeout`` and a quarter more."""
    return stall_timeout / 4


def _shut_down(fd: int) -> None:
    """Wake the thread blocked on this socket: it reads the end of the stream."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


#: The process's watchdog.
stall_watch = StallWatch()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=stall_watch.after_fork_in_child)
