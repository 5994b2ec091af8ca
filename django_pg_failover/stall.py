"""A call that waits on a server that stopped answering is given up, never left hanging.

A frozen server (SIGSTOP, a stuck VM whose kernel still acknowledges TCP)
makes a query, a COMMIT or a health check wait forever: keepalives and
``tcp_user_timeout`` never fire while the kernel answers. Like pgjdbc's
``socketTimeout``, but without cutting a long query short:

- every call the backend makes to the server is noted on the wrapper when it
  starts and when it ends (the error wrapper Django puts around each call,
  and the health check): a depth counter and a start time, written in place.
  No object, no lock, no Python call per query: the healthy path pays two
  attribute writes and a clock read;
- one watchdog thread per process knows the wrappers with an open, watched
  connection (they sign up when they connect). It sleeps until the earliest
  moment a call could have waited ``stall_timeout``, then looks at the calls
  in flight. Once one has waited that long, it asks whether its server is
  still alive: a new connection to it, bounded by ``connect_timeout``;
- a server that answers is left alone (a long query is the server's business:
  ``statement_timeout`` is the tool for it), and asked again after another
  ``stall_timeout``; a server that does not answer has the call's socket shut
  down: the call raises, the connection counts as lost, and the next use
  outside an atomic block connects anew.

The watchdog and the calling thread share no lock. A call is known by its
start time: the watchdog gives up the call it checked only if that call is
still the one in flight, and the calling thread, when its call fails, reads
whether the watchdog gave that very call up (to say so in the error).
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
        #: Per wrapper, the call the watchdog is checking or left alone (its start
        #: time) and when to look at it again (inf while a check runs).
        self._looks: dict[int, tuple[float, float]] = {}
        self._thread: threading.Thread | None = None
        #: When the watchdog will look next, as it went to sleep.
        self._next_look = math.inf

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
            elif time.monotonic() + stall_timeout < self._next_look:
                # Asleep for longer than this connection's first call may take.
                self._wake.notify()

    @contextmanager
    def guard(self, wrapper: DatabaseWrapper) -> Iterator[None]:
        """For a call Django's error wrapper does not surround (the health check)."""
        watched = wrapper.connected_stall_timeout is not None
        if watched:
            if not wrapper.call_depth:
                wrapper.call_started = time.monotonic()
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
        started, reason = record
        return reason if started == wrapper.call_started else None

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
                due, next_look = self._due_calls(now)
                if next_look < math.inf or due:
                    idle_since = now
                elif now - idle_since > _IDLE_EXIT:
                    return
                if not due:
                    self._next_look = min(next_look, idle_since + _IDLE_EXIT + 1.0)
                    self._wake.wait(max(self._next_look - now, 0.0))
                    self._next_look = math.inf
                    continue
            for wrapper, started in due:
                workers.submit(self._check, wrapper, started)

    def _due_calls(self, now: float) -> tuple[list[tuple[DatabaseWrapper, float]], float]:
        """The calls that have waited long enough (marked as being checked), and when
        the next one could have (the lock held)."""
        due: list[tuple[DatabaseWrapper, float]] = []
        next_look = math.inf
        looks: dict[int, tuple[float, float]] = {}
        for wrapper in list(self._wrappers):
            stall_timeout = wrapper.connected_stall_timeout
            if stall_timeout is None or wrapper.connection is None:
                self._wrappers.discard(wrapper)
                continue
            key = id(wrapper)
            if not wrapper.call_depth:
                # A call starting from now on cannot have waited long enough sooner.
                next_look = min(next_look, now + stall_timeout)
                continue
            started = wrapper.call_started
            look = self._looks.get(key)
            when = look[1] if look is not None and look[0] == started else started + stall_timeout
            if when <= now:
                due.append((wrapper, started))
                when = math.inf  # being checked
            looks[key] = (started, when)
            next_look = min(next_look, when)
        self._looks = looks
        return due, next_look

    def _check(self, wrapper: DatabaseWrapper, started: float) -> None:
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
            now = time.monotonic()
            if not (wrapper.call_depth and wrapper.call_started == started):
                return  # the call ended meanwhile: its connection is left alone
            waited = now - started
            if problem is None:
                self._looks[id(wrapper)] = (started, now + stall_timeout)
                self._wake.notify()
                logger.info(
                    "database alias %r: a call has waited %.1fs on %s, which answers: left alone",
                    wrapper.alias,
                    waited,
                    host,
                )
                return
            reason = (
                f"{host} did not answer for {waited:.1f}s "
                f"(stall_timeout={stall_timeout:g}s) and a new connection to it failed: "
                f"{problem}"
            )
            # Written before the socket is shut down: the calling thread, woken by
            # it, finds why.
            wrapper.call_given_up = (started, reason)
            _shut_down(fd)
        logger.warning("database alias %r: giving up a call: %s", wrapper.alias, reason)


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
