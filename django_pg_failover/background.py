"""Daemon threads for the work the backend runs beside a request.

A connect attempt to a hung host can block for ``connect_timeout``: it runs in
a daemon thread, so that it never delays the exit of the process. Threads are
reused (starting one costs more than a connect attempt's bookkeeping) and end
after a minute without work. After ``fork()`` the child starts afresh: the
parent's threads do not exist there.

A driver's connect runs in C without the GIL, taking locks of libpq, OpenSSL
and the C library on the way (name lookup, SCRAM's random numbers and
hashes). A child forked while a thread held one of those would wait for it
forever at its first connect (gunicorn ``--preload``, ``multiprocessing``):
``fork()`` waits until no connect of ours is inside the driver.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_IDLE_SECONDS = 60.0
#: How long fork() waits for connects in flight (each is bounded by its
#: connect_timeout, 5 s by default); past that the fork goes ahead.
FORK_WAIT_SECONDS = 10.0


class DaemonWorkers:
    """A minimal executor of daemon threads: as many as there is work in flight."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple]] = (
            queue.SimpleQueue()
        )
        self._idle = 0
        self._started = 0
        #: Work handed to the threads so far (the healthy path hands over none).
        self.submitted = 0
        #: Work the threads have finished (``submitted - finished`` is in flight).
        self.finished = 0

    def submit(self, function: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            # Queued under the lock: a worker that finds the queue empty under
            # the same lock may leave without stranding this item.
            self._queue.put((future, function, args))
            self.submitted += 1
            if self._idle:
                self._idle -= 1
            else:
                self._started += 1
                threading.Thread(
                    target=self._work, name=f"{self._name}-{self._started}", daemon=True
                ).start()
        return future

    def _work(self) -> None:
        while True:
            try:
                future, function, args = self._queue.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._idle -= 1
                        return
                continue
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function(*args))
                except BaseException as exc:
                    future.set_exception(exc)
            del future, function, args
            with self._lock:
                self._idle += 1
                self.finished += 1

    def after_fork_in_child(self) -> None:
        self._reset()


#: Connect attempts (several hosts in parallel) and liveness probes.
workers = DaemonWorkers("pg-failover")

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=workers.after_fork_in_child)


class ForkGate:
    """Keeps ``fork()`` out of the driver's connects (see the module's docstring)."""

    def __init__(self, wait: float = FORK_WAIT_SECONDS) -> None:
        self._wait = wait
        self._block = _InsideDriver(self)
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._condition = threading.Condition(self._lock)
        self._inside = 0
        self._forking = False

    def inside(self) -> _InsideDriver:
        """Hold off ``fork()`` while the block runs (a fork under way is waited for)."""
        return self._block

    # The lock itself, not the condition, where the common case needs no waiting:
    # a condition's ``with`` is a Python-level call, and every connect comes here.
    def enter(self) -> None:
        with self._lock:
            while self._forking:
                self._condition.wait()
            self._inside += 1

    def leave(self) -> None:
        with self._lock:
            self._inside -= 1
            if self._forking:
                self._condition.notify_all()

    def busy(self) -> bool:
        """Whether a connect is inside the driver now."""
        return self._inside > 0

    def before_fork(self) -> None:
        deadline = time.monotonic() + self._wait
        with self._condition:
            self._forking = True
            while self._inside and (left := deadline - time.monotonic()) > 0:
                self._condition.wait(left)

    def after_fork_in_parent(self) -> None:
        with self._condition:
            self._forking = False
            self._condition.notify_all()

    def after_fork_in_child(self) -> None:
        self._reset()  # the threads that were inside are not in the child


class _InsideDriver:
    """``with gate.inside():`` (one object per gate: a connect allocates nothing for it)."""

    __slots__ = ("_gate",)

    def __init__(self, gate: ForkGate) -> None:
        self._gate = gate

    def __enter__(self) -> None:
        self._gate.enter()

    def __exit__(self, *exc_info: object) -> None:
        self._gate.leave()


#: Every connect attempt of the process passes through it.
fork_gate = ForkGate()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=fork_gate.before_fork,
        after_in_parent=fork_gate.after_fork_in_parent,
        after_in_child=fork_gate.after_fork_in_child,
    )
