"""Metrics: what the backend records through OpenTelemetry, when its API is installed.

The backend calls the functions of this module where it already logs or
signals an event (a connection lost, a connect attempt failed, a failover
over, a read re-run): never on the healthy path of a query, a connect or a
pool's checkout, so that recording costs a healthy request nothing. The rules:

- **Optional**: without ``opentelemetry-api`` (the ``[otel]`` extra), nothing
  is recorded and nothing of OpenTelemetry is imported. The module that
  records (:mod:`.instruments`) is imported at the first event, or when the
  first pool is built, and only when the API can be imported: a process whose
  connections never fail never imports it.
- **Once per process**: the instruments are made once, from the global
  ``MeterProvider``; OpenTelemetry's API forwards them to a provider set later.
- **A failover is counted once per alias and process**: an *outage* starts at
  the first sign that the alias's server is gone (a connection lost, or a pass
  over the host list that found no suitable server) and ends at the first
  connection made after it. It counts as a failover when that connection
  reached another server than the one lost (or any server, when the outage
  began without a connection: nothing could be reached). Its length is the
  time without a primary. The losses of the other connections to the server
  already left behind (found one by one, as each is used) start no outage.
- **Never in the way**: a failure to record is logged at debug level and
  swallowed; the event's caller goes on.

Pools (Django's, ``OPTIONS["pool"]``) keep the times of their checkouts in a
bounded buffer (two clock reads, no OpenTelemetry call per checkout), which
:mod:`.instruments` turns into histograms at each collection.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django_pg_failover.connecting.verdicts import Verdict
    from django_pg_failover.metrics.instruments import Recorder
    from django_pg_failover.settings.hosts import Host

logger = logging.getLogger("django_pg_failover")

#: Checkouts whose times a pool keeps until the next collection, at most.
CHECKOUTS_KEPT = 10_000

_UNLOADED: Any = object()
_recorder: Recorder | None = _UNLOADED
_lock = threading.Lock()


def recorder() -> Recorder | None:
    """The process's recorder; None without OpenTelemetry's API (nothing imported then)."""
    global _recorder
    if _recorder is _UNLOADED:
        with _lock:
            if _recorder is _UNLOADED:
                _recorder = _load()
    return _recorder


def _load() -> Recorder | None:
    if importlib.util.find_spec("opentelemetry") is None:
        return None
    try:
        from django_pg_failover.metrics.instruments import Recorder

        return Recorder()
    except ImportError:  # a namespace package without the API (e.g. another component)
        return None


# -- failovers: outages per alias ------------------------------------------------------


@dataclass
class _Outage:
    began: float
    #: The server whose connection was lost (None: nothing could be reached).
    left: Host | None


outages: dict[str, _Outage] = {}
#: Per alias, servers a failover left behind: losing their other connections is no outage.
_left_behind: dict[str, set[Host]] = {}


def _outage_begins(alias: str, server: Host | None) -> None:
    if server is not None and server in _left_behind.get(alias, ()):
        return
    with _lock:
        if alias not in outages:
            outages[alias] = _Outage(time.monotonic(), server)


def _outage_over(alias: str, server: Host) -> tuple[float, bool] | None:
    """(seconds without a server, a failover) if an outage of ``alias`` was under way."""
    with _lock:
        outage = outages.pop(alias, None)
        if outage is None:
            return None
        failover = outage.left != server
        if failover:
            left = _left_behind.setdefault(alias, set())
            if outage.left is not None:
                left.add(outage.left)
            left.discard(server)
    return time.monotonic() - outage.began, failover


# -- the events (each called where the backend logs or signals it) ---------------------


def _record(method: str, *args: Any) -> None:
    r = recorder()
    if r is None:
        return
    try:
        getattr(r, method)(*args)
    except Exception:
        logger.debug("recording %s failed", method, exc_info=True)


def connection_lost(alias: str, server: Host | None, cause: str) -> None:
    """A connection was lost (``cause``: crash, stalled, demoted, closed_while_idle)."""
    if recorder() is None:
        return
    _outage_begins(alias, server)
    _record("connection_lost", alias, server, cause)


def no_server(alias: str) -> None:
    """A pass over the host list found no suitable server."""
    if recorder() is None:
        return
    _outage_begins(alias, None)


def connect_attempt_failed(alias: str, host: Host, verdict: Verdict | None) -> None:
    """A connecting thread's attempt at ``host`` failed (``verdict`` None: a server of
    the wrong kind answered)."""
    if recorder() is None:
        return
    _record("connect_attempt_failed", alias, host, verdict.value if verdict else "wrong_role")


def connected(alias: str, server: Host) -> None:
    """A connection was made after failures or a wait (never on the healthy path)."""
    if not outages or recorder() is None:
        return
    over = _outage_over(alias, server)
    if over is not None and over[1]:
        _record("failover", alias, server, over[0])


#: Per alias, the threads waiting for the watcher to find a server (while recorded).
waiting_threads: dict[str, int] = {}


def waiting(alias: str, change: int) -> None:
    """A thread of ``alias`` begins (1) or ends (-1) a wait for a suitable server."""
    if recorder() is None:
        return
    with _lock:
        waiting_threads[alias] = waiting_threads.get(alias, 0) + change


def read_retried(alias: str, outcome: str) -> None:
    """A read whose connection was lost: re-run (``rerun``) or not (``refused``)."""
    _record("read_retried", alias, outcome)


# -- pools -----------------------------------------------------------------------------


class PoolTimes:
    """A pool's checkouts since the last collection: (asked, handed out, given back)."""

    def __init__(self) -> None:
        self.checkouts: deque[tuple[tuple[float, float], float]] = deque(maxlen=CHECKOUTS_KEPT)
        self.creates: deque[float] = deque(maxlen=CHECKOUTS_KEPT)


def pool_built(pool: Any, alias: str) -> PoolTimes | None:
    """A pool was built: observed from now on; its times buffer (None: not recorded)."""
    r = recorder()
    if r is None:
        return None
    times = PoolTimes()
    try:
        r.observe_pool(pool, alias, times)
    except Exception:
        logger.debug("observing a pool failed", exc_info=True)
        return None
    return times


def pool_timeout(alias: str) -> None:
    """A request for a pool's connection gave up waiting."""
    _record("pool_timeout", alias)


def forget_outages() -> None:
    """For tests: every alias starts without an outage."""
    with _lock:
        outages.clear()
        _left_behind.clear()


def _after_fork_in_child() -> None:
    """A child process starts with nothing waiting and no outage of its own (the
    parent's threads are not in the child; the parent counts its own failovers)."""
    global _lock
    _lock = threading.Lock()
    waiting_threads.clear()
    outages.clear()
    _left_behind.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
