"""A call that waits on a server that stopped answering is given up, never left hanging.

A frozen server (SIGSTOP, a stuck VM whose kernel still acknowledges TCP)
makes a query, a COMMIT or a health check wait forever: keepalives and
``tcp_user_timeout`` never fire while the kernel answers. Like pgjdbc's
``socketTimeout``, but without cutting a long query short:

- every call the backend makes to the server is noted when it starts and when
  it ends (the error wrapper Django puts around each call, and the health
  check): a time and a dictionary entry, no round trip, no thread per call;
- one watchdog thread per process looks at the calls in flight. Once a call
  has waited ``stall_timeout`` seconds, the watchdog asks whether its server is
  still alive: a new connection to it, bounded by ``connect_timeout``;
- a server that answers is left alone (a long query is the server's business:
  ``statement_timeout`` is the tool for it), and asked again after another
  ``stall_timeout``; a server that does not answer has the call's socket shut
  down: the call raises, the connection counts as lost, and the next use
  outside an atomic block connects anew.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .background import workers

if TYPE_CHECKING:
    from .base import DatabaseWrapper
    from .hosts import Host

logger = logging.getLogger("django_pg_failover")

# The watchdog looks at new calls this often, and leaves after this long without any.
_TICK = 0.25
_IDLE_EXIT = 60.0


class Call:
    """One call in flight on one connection (slots: one is made per call)."""

    __slots__ = ("checking", "depth", "due", "fd", "given_up", "host", "stall_timeout", "started",
                 "wrapper")  # fmt: skip

    def __init__(
        self, wrapper: DatabaseWrapper, host: Host, fd: int, stall_timeout: float, now: float
    ) -> None:
        self.wrapper = wrapper
        self.host = host
        self.fd = fd
        self.stall_timeout = stall_timeout
        self.started = now
        #: When the watchdog next looks at it (after a liveness check, later again).
        self.due = now + stall_timeout
        self.checking = False
        #: Why the watchdog gave the call up (None while it has not).
        self.given_up: str | None = None
        self.depth = 1


class StallWatch:
    """The process's watchdog over calls in flight."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._calls: dict[int, Call] = {}
        #: Calls the watchdog gave up, until their thread leaves them.
        self._given_up: dict[int, Call] = {}
        self._thread: threading.Thread | None = None

    def after_fork_in_child(self) -> None:
        self._reset()

    # -- the calling thread (the healthy path: keep it cheap) --------------------------

    def enter(self, wrapper: DatabaseWrapper) -> None:
        # Read from the connection, set when it opened: settings are not parsed here.
        stall_timeout = wrapper.connected_stall_timeout
        if stall_timeout is None or wrapper.connection is None:
            return
        key = id(wrapper)
        call = self._calls.get(key)
        if call is not None:  # a call inside a call (an error wrapper nested)
            call.depth += 1
            return
        self._calls[key] = Call(
            wrapper, wrapper.server, wrapper.server_fd, stall_timeout, time.monotonic()
        )
        if self._thread is None:
            self._start()

    @contextmanager
    def guard(self, wrapper: DatabaseWrapper) -> Iterator[None]:
        """For a call Django's error wrapper does not surround (the health check)."""
        self.enter(wrapper)
        try:
            yield
        finally:
            self.leave(wrapper)

    def leave(self, wrapper: DatabaseWrapper) -> Call | None:
        """The call ended: the record of it, if the watchdog gave it up."""
        key = id(wrapper)
        call = self._calls.get(key)
        if call is not None and call.depth > 1:
            call.depth -= 1
            return None
        # Whoever takes the call out of the table (dict.pop is atomic), this thread
        # or the watchdog giving it up, decides how it ends: no lock on this path.
        if call is not None and self._calls.pop(key, None) is call:
            return None
        return self._given_up.pop(key, None)

    # -- the watchdog -----------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="pg-failover-stall-watch", daemon=True
                )
                self._thread.start()

    def _watch(self) -> None:
        try:
            self._watch_calls()
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None  # the next call starts a new watchdog

    def _watch_calls(self) -> None:
        idle_since = time.monotonic()
        while True:
            with self._lock:
                now = time.monotonic()
                # list() copies in one step: enter() adds calls without the lock.
                calls = list(self._calls.values())
                waiting = [c for c in calls if not c.checking]
                due = [c for c in waiting if c.due <= now]
                for call in due:
                    call.checking = True
                if calls:
                    idle_since = now
                elif now - idle_since > _IDLE_EXIT:
                    return
                if not due:
                    next_due = min((c.due for c in waiting), default=now + _TICK)
                    # Calls that start meanwhile are looked at within a tick.
                    self._wake.wait(min(max(next_due - now, 0.0), _TICK))
            for call in due:
                workers.submit(self._check, call)

    def _check(self, call: Call) -> None:
        """Is the server of a call that has waited ``stall_timeout`` still alive?"""
        wrapper = call.wrapper
        try:
            problem = wrapper.connector.probe(call.host, wrapper.get_connection_params())
        except Exception as exc:  # a bug must not leave the call unwatched
            problem = None
            logger.exception("database alias %r: liveness check failed: %s", wrapper.alias, exc)
        key = id(wrapper)
        with self._lock:
            if self._calls.get(key) is not call:
                return  # the call ended meanwhile
            call.checking = False
            waited = time.monotonic() - call.started
            if problem is None:
                call.due = time.monotonic() + call.stall_timeout
                logger.info(
                    "database alias %r: a call has waited %.1fs on %s, which answers: left alone",
                    wrapper.alias,
                    waited,
                    call.host,
                )
                return
            call.given_up = (
                f"{call.host} did not answer for {waited:.1f}s "
                f"(stall_timeout={call.stall_timeout:g}s) and a new connection to it failed: "
                f"{problem}"
            )
            # Recorded before the call leaves the table: its thread finds it either way.
            self._given_up[key] = call
            if self._calls.pop(key, None) is not call:
                self._given_up.pop(key, None)
                return  # the call ended meanwhile: its connection is left alone
            _shut_down(call.fd)
        logger.warning("database alias %r: giving up a call: %s", wrapper.alias, call.given_up)


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
