"""Daemon threads for the work the backend runs beside a request.

A connect attempt to a hung host can block for ``connect_timeout``: it runs in
a daemon thread, so that it never delays the exit of the process. Threads are
reused (starting one costs more than a connect attempt's bookkeeping) and end
after a minute without work. After ``fork()`` the child starts afresh: the
parent's threads do not exist there.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_IDLE_SECONDS = 60.0


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

    def submit(self, function: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            # Queued under the lock: a worker that finds the queue empty under
            # the same lock may leave without stranding this item.
            self._queue.put((future, function, args))
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

    def after_fork_in_child(self) -> None:
        self._reset()


#: Connect attempts (several hosts in parallel) and liveness probes.
workers = DaemonWorkers("pg-failover")

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=workers.after_fork_in_child)
