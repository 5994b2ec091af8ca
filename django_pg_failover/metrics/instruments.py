"""The OpenTelemetry instruments (imported only when ``opentelemetry-api`` is installed).

Names, units and attributes follow OpenTelemetry's semantic conventions for
database clients where one exists (``db.client.connection.*``, for Django's
pool, with ``db.client.connection.pool.name`` the database alias); the
failover events, which no convention covers, are named under
``django_pg_failover.``, with the same alias attribute and ``server.address``
and ``server.port`` for the server concerned. docs/metrics.rst lists them all.

A pool's state is read when a reader collects (observable instruments: the
pool pays nothing between collections). Its checkout times, buffered by the
pool (:class:`~django_pg_failover.metrics.PoolTimes`), are recorded into their
histograms by the same callback, before the collection reads the histograms.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from django_pg_failover import __version__
from django_pg_failover import metrics as hooks

if TYPE_CHECKING:
    from django_pg_failover.metrics import PoolTimes
    from django_pg_failover.settings.hosts import Host

PREFIX = "django_pg_failover."
POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
CAUSE = PREFIX + "cause"
VERDICT = PREFIX + "verdict"
OUTCOME = PREFIX + "outcome"

#: Buckets for connection times (seconds): a loopback connect to a failover's length.
_TIME_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _server(alias: str, server: Host | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {POOL_NAME: alias}
    if server is not None:
        attributes["server.address"] = server.host
        attributes["server.port"] = server.port
    return attributes


class _Meter:
    """The meter, noting each instrument's kind and unit by name (the docs' and tests' list)."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.meter = meter
        self.made: dict[str, tuple[str, str]] = {}

    def __getattr__(self, kind: str) -> Callable[..., Any]:
        create = getattr(self.meter, kind)

        def make(name: str, **kwargs: Any) -> Any:
            self.made[name] = (kind.replace("observable_", ""), kwargs.get("unit", ""))
            return create(name, **kwargs)

        return make


class Recorder:
    """The process's instruments, and the pools they observe."""

    def __init__(self) -> None:
        meter = _Meter(metrics.get_meter("django_pg_failover", __version__))
        #: Each instrument's kind (``create_counter``, ...: an observable one's
        #: synchronous kind) and unit, by name.
        self.instruments = meter.made
        # -- failover events -------------------------------------------------------------
        self.lost = meter.create_counter(
            PREFIX + "connections.lost",
            unit="{connection}",
            description="Open connections found lost (or on a server turned read-only)",
        )
        self.attempts_failed = meter.create_counter(
            PREFIX + "connect.attempts.failed",
            unit="{attempt}",
            description="Connect attempts at one host that failed, in a connecting thread's pass",
        )
        self.failovers = meter.create_counter(
            PREFIX + "failovers",
            unit="{failover}",
            description="Connections made to another server after an outage",
        )
        self.failover_time = meter.create_histogram(
            PREFIX + "failover.duration",
            unit="s",
            description="Time without a suitable server, from the first sign to the new server",
            explicit_bucket_boundaries_advisory=_TIME_BUCKETS,
        )
        self.reads_retried = meter.create_counter(
            PREFIX + "reads.retried",
            unit="{read}",
            description="Reads whose connection was lost: re-run, or not (refused)",
        )
        meter.create_observable_up_down_counter(
            PREFIX + "connections.waiting",
            callbacks=[self._observe_waiting],
            unit="{thread}",
            description="Threads waiting for a suitable server",
        )
        # -- Django's pool (semantic conventions) --------------------------------------
        self._pools: weakref.WeakKeyDictionary[Any, tuple[str, PoolTimes]] = (
            weakref.WeakKeyDictionary()
        )
        self._pools_lock = threading.Lock()
        self.timeouts = meter.create_counter(
            "db.client.connection.timeouts",
            unit="{timeout}",
            description="Requests for a pool's connection that gave up waiting",
        )
        self.create_time = meter.create_histogram(
            "db.client.connection.create_time",
            description="The time it took to create a new connection",
            unit="s",
            explicit_bucket_boundaries_advisory=_TIME_BUCKETS,
        )
        self.wait_time = meter.create_histogram(
            "db.client.connection.wait_time",
            description="The time it took to obtain an open connection from the pool",
            unit="s",
            explicit_bucket_boundaries_advisory=_TIME_BUCKETS,
        )
        self.use_time = meter.create_histogram(
            "db.client.connection.use_time",
            description="The time between borrowing a connection and returning it to the pool",
            unit="s",
            explicit_bucket_boundaries_advisory=_TIME_BUCKETS,
        )
        for name, unit, description, callback in (
            (
                "db.client.connection.count",
                "{connection}",
                "The number of connections in the state given by the state attribute",
                self._observe_count,
            ),
            (
                "db.client.connection.max",
                "{connection}",
                "The maximum number of open connections allowed",
                self._gauge("pool_max"),
            ),
            (
                "db.client.connection.idle.max",
                "{connection}",
                "The maximum number of idle open connections allowed",
                self._gauge("pool_max"),
            ),
            (
                "db.client.connection.idle.min",
                "{connection}",
                "The minimum number of idle open connections allowed",
                self._gauge("pool_min"),
            ),
            (
                "db.client.connection.pending_requests",
                "{request}",
                "The number of current pending requests for an open connection",
                self._gauge("requests_waiting"),
            ),
        ):
            meter.create_observable_up_down_counter(
                name, callbacks=[callback], unit=unit, description=description
            )

    # -- events -----------------------------------------------------------------------

    def connection_lost(self, alias: str, server: Host | None, cause: str) -> None:
        self.lost.add(1, {**_server(alias, server), CAUSE: cause})

    def connect_attempt_failed(self, alias: str, host: Host, verdict: str) -> None:
        self.attempts_failed.add(1, {**_server(alias, host), VERDICT: verdict})

    def failover(self, alias: str, server: Host, seconds: float) -> None:
        attributes = _server(alias, server)
        self.failovers.add(1, attributes)
        self.failover_time.record(seconds, attributes)

    def read_retried(self, alias: str, outcome: str) -> None:
        self.reads_retried.add(1, {POOL_NAME: alias, OUTCOME: outcome})

    def pool_timeout(self, alias: str) -> None:
        self.timeouts.add(1, {POOL_NAME: alias})

    # -- observed state ----------------------------------------------------------------

    def _observe_waiting(self, options: CallbackOptions) -> Iterator[Observation]:
        for alias, count in list(hooks.waiting_threads.items()):
            yield Observation(count, {POOL_NAME: alias})

    def observe_pool(self, pool: Any, alias: str, times: PoolTimes) -> None:
        with self._pools_lock:
            self._pools[pool] = (alias, times)

    def _open_pools(self) -> Iterable[tuple[str, Any, PoolTimes]]:
        with self._pools_lock:
            pools = list(self._pools.items())
        for pool, (alias, times) in pools:
            if not pool.closed:
                yield alias, pool, times

    def _observe_count(self, options: CallbackOptions) -> Iterator[Observation]:
        for alias, pool, times in self._open_pools():
            self._record_times(alias, times)
            stats = pool.get_stats()
            idle = stats.get("pool_available", 0)
            used = stats.get("pool_size", 0) - idle
            yield Observation(idle, {POOL_NAME: alias, STATE: "idle"})
            yield Observation(used, {POOL_NAME: alias, STATE: "used"})

    def _gauge(self, stat: str):
        def observe(options: CallbackOptions) -> Iterator[Observation]:
            for alias, pool, _ in self._open_pools():
                yield Observation(pool.get_stats().get(stat, 0), {POOL_NAME: alias})

        return observe

    def _record_times(self, alias: str, times: PoolTimes) -> None:
        """The checkouts buffered since the last collection, into their histograms."""
        attributes = {POOL_NAME: alias}
        while True:
            try:
                (asked, handed_out), given_back = times.checkouts.popleft()
            except IndexError:
                break
            self.wait_time.record(handed_out - asked, attributes)
            self.use_time.record(given_back - handed_out, attributes)
        while True:
            try:
                seconds = times.creates.popleft()
            except IndexError:
                break
            self.create_time.record(seconds, attributes)
