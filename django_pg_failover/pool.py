"""Django's connection pool (``OPTIONS["pool"]``, psycopg 3) with the backend's guarantees.

Django builds a ``psycopg_pool.ConnectionPool`` whose connections come from
libpq's own walk of the host list, and whose failures only reach the
``psycopg.pool`` logger. :class:`FailoverPool` differs in four ways:

- its connections are opened by the backend's :class:`~.connect.Connector`:
  the host status memory's order, the signals, the log, the verdict per host;
- a connection opened for the pool waits for a suitable server for as long as
  the pool is open, so that the pool never backs off (or gives up, after
  ``reconnect_timeout``) while no primary exists, and a new primary serves
  requests as soon as it answers;
- a connection is checked before it is handed out: its socket always (no round
  trip, :mod:`.losing.liveness`), and with ``CONN_HEALTH_CHECKS`` a round trip that
  also shows a server fenced read-only; one that fails is replaced at once
  with every other idle connection (the server it reached is gone or
  demoted), instead of failing one request each;
- waiting for a connection ends with the backend's error naming each host
  after ``retry_timeout`` when no server could be reached, at once when every
  host refused for good (the pool's ``timeout`` still bounds waiting for a
  busy pool);
- in a child process (``fork()``), the parent's pool is not used: its worker
  threads do not exist there and its idle connections are the parent's
  sessions. It is let go of without a word to their servers (never closed:
  psycopg_pool's close would end them, and wait for the threads) and the next
  use builds the child's own (:func:`after_fork_in_child`, :mod:`.losing.inherited`).

A request waits in psycopg_pool's own queue, first come first served, and
keeps its place there: it enters the queue once for the whole wait (twice
when ``retry_timeout`` ends before the pool's ``timeout`` on a pool that is
merely busy), never once per look at the hosts. A waiter that left the
queue and came back at its end could be overtaken by every newcomer, again
and again, and time out on a busy pool that served everyone else in time.
So the hosts' state is not polled by the waiters: the pool's worker that
sees every host refuse for good turns the waiters away itself, as
psycopg_pool's ``close()`` does (its ``_waiting`` queue, under its
``_lock``, each waiter failed through ``WaitingClient.fail()``: the same in
every psycopg_pool from 3.3.0 to 3.3.3, and the only way to end a wait in
that queue), and ``retry_timeout`` is a deadline of the wait itself.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from django.db.backends.postgresql.base import DatabaseWrapper as PostgresWrapper
from psycopg_pool import ConnectionPool, PoolTimeout

from django_pg_failover import metrics
from django_pg_failover.connecting.memory import HostState, host_status
from django_pg_failover.connecting.roles import Role, reported_role, suits
from django_pg_failover.connecting.trust import pooler_error, verified_role
from django_pg_failover.losing.inherited import let_go
from django_pg_failover.losing.liveness import idle_connection_failure
from django_pg_failover.losing.loss import announce
from django_pg_failover.settings.hosts import Host

if TYPE_CHECKING:
    from django_pg_failover.connecting.connector import Connector

logger = logging.getLogger("django_pg_failover")

#: How long a request that comes while every host refuses for good waits for a
#: connection that is free (or given back) before it gets the backend's error.
_REFUSED_WAIT = 0.1
#: psycopg_pool refuses a wait of 0 even when a connection is free.
_MIN_WAIT = 0.001


class _EveryHostRefused(Exception):
    """Ends a wait in the pool's queue: every host refused for good (see getconn())."""


class _Opener:
    """The pool's ``connection_class``: what it calls to open a connection."""

    def __init__(self, pool: FailoverPool) -> None:
        self.pool = pool

    def connect(self, conninfo: str = "", **kwargs: Any) -> Any:
        return self.pool.open_connection(kwargs)


class FailoverPool(ConnectionPool):
    def __init__(
        self,
        *,
        connector: Connector,
        health_checks: bool,
        kwargs: Mapping[str, Any],
        check: Callable[[Any], None] | None = None,
        **options: Any,
    ) -> None:
        self.connector = connector
        self._user_check = check  # Django 6.1 lets OPTIONS["pool"] give one
        #: Checkout times kept for the metrics (None: not recorded, see :mod:`.metrics`).
        self.times: metrics.PoolTimes | None = None
        # With CONN_HEALTH_CHECKS, psycopg_pool runs the check at every checkout,
        # as with Django's pool; ours also refuses a server that changed role.
        if health_checks:
            check = self._health_check
        self._configure_session = options.pop("configure", None)
        if self._configure_session is not None:
            options["configure"] = self._configure_new
        super().__init__(kwargs=dict(kwargs), check=check, **options)
        self.connection_class = _Opener(self)  # type: ignore[assignment]
        self.times = metrics.pool_built(self, connector.alias)

    # -- opening connections (in the pool's worker threads) ----------------------------

    def open_connection(self, kwargs: Mapping[str, Any]) -> Any:
        began = time.monotonic()
        try:
            landing = self.connector.connect(
                kwargs, deadline=math.inf, keep_waiting=lambda: not self.closed
            )
        except Exception:
            if self.connector.refused_for_good:
                self._turn_waiters_away()
            raise
        # Kept on the connection (psycopg's has attributes of its own; no lookup
        # by a weak reference at every checkout): the wrapper that checks it out
        # learns its server and session from it.
        landing.connection._pg_failover_landing = landing
        if self.times is not None:
            self.times.creates.append(time.monotonic() - began)
        return landing.connection

    def _configure_new(self, connection: Any) -> None:
        """Django's set-up of a new connection (its first queries), run by psycopg_pool.

        A session lost there is its server's failure, as a wrapper's lost session
        is: the host is remembered down, so that the pool's next connect goes
        elsewhere. (Behind a pooler whose server is down, the connect itself
        succeeds with a replayed start-up message; only the first query fails.)
        """
        assert self._configure_session is not None
        try:
            self._configure_session(connection)
        except Exception as exc:
            landing = getattr(connection, "_pg_failover_landing", None)
            driver = self.connector.driver
            if landing is not None and driver.connection_lost(exc, connection):
                pooler_error(driver, exc, landing.host)
                host_status.record_down(landing.host, self.connector.policy.host_recheck)
            raise

    def _turn_waiters_away(self) -> None:
        """Every host refused for good: no request waits for a connection.

        psycopg_pool's ``close()`` ends the waits in its queue the same way. A
        waiter handed a connection meanwhile keeps it: ``WaitingClient.set()``
        and ``fail()`` exclude each other.
        """
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        for client in waiting:
            client.fail(_EveryHostRefused())

    # -- handing them out ----------------------------------------------------------------

    def getconn(self, timeout: float | None = None) -> Any:
        connector = self.connector
        started = time.monotonic()
        pool_deadline = started + (self.timeout if timeout is None else timeout)
        hosts_deadline = started + (
            _REFUSED_WAIT if connector.refused_for_good else connector.policy.retry_timeout
        )
        while True:
            now = time.monotonic()
            # One wait in the queue up to the nearer deadline (see the module's docstring).
            until = hosts_deadline if now < hosts_deadline < pool_deadline else pool_deadline
            try:
                connection = super().getconn(timeout=max(until - now, _MIN_WAIT))
            except _EveryHostRefused:
                metrics.pool_timeout(connector.alias)
                raise connector.give_up_error(time.monotonic() - started) from None
            except PoolTimeout:
                # Also the end for a request that entered the queue in the instant after
                # a refusal had emptied it, when no later refusal came first (a pool
                # that can grow tries a connect for it at once).
                now = time.monotonic()
                if connector.failing and (connector.refused_for_good or now >= hosts_deadline):
                    metrics.pool_timeout(connector.alias)
                    raise connector.give_up_error(now - started) from None
                if now >= pool_deadline:
                    metrics.pool_timeout(connector.alias)
                    raise PoolTimeout(
                        f"couldn't get a connection after {now - started:.2f} sec"
                    ) from None
                continue
            if self.times is not None:  # (asked, handed out): see putconn()
                connection._pg_failover_checkout = (started, time.monotonic())  # type: ignore[attr-defined]
            # Without health checks, a look at the socket (no round trip).
            failure = idle_connection_failure(self.connector.driver, connection)
            if failure is None:
                return connection
            self._replace(connection, failure)

    def putconn(self, conn: Any) -> None:
        if self.times is not None:
            # Set by getconn(), which handed out every connection given back here.
            # No call more than the clock's and the buffer's (a pool's healthy path).
            try:  # noqa: SIM105 - suppress() costs calls
                self.times.checkouts.append((conn._pg_failover_checkout, time.monotonic()))
            except AttributeError:
                pass
        ConnectionPool.putconn(self, conn)  # not super(): one call less

    def _health_check(self, connection: Any) -> None:
        """psycopg_pool's check_connection, and the server's role judged anew.

        A connection that fails is closed here, with its idle siblings, so that
        psycopg_pool discards it (and hands out the next at once).
        """
        connector = self.connector
        driver = connector.driver
        try:
            landing = getattr(connection, "_pg_failover_landing", None)
            host = landing.host if landing is not None else None
            if host is not None and (connector.ask_every_host or host in host_status.distrusted):
                # The one round trip asks the role: a pooler may replay a stale report.
                role: Role | None = verified_role(driver, connection, host)
            else:
                self.check_connection(connection)  # one round trip
                # The round trip brought the server's settings up to date.
                role = reported_role(driver, connection)
            if role is not None and not suits(role, connector.target_session_attrs):
                raise driver.operational_error(f"the server is now a {role.value}")
            if self._user_check is not None:
                self._user_check(connection)
        except Exception as failure:
            self._replace(connection, failure, give_back=False)
            raise

    def _replace(self, connection: Any, failure: BaseException, give_back: bool = True) -> None:
        """A checked-out connection failed its check: drop it and its idle siblings."""
        connector = self.connector
        driver = connector.driver
        landing = getattr(connection, "_pg_failover_landing", None)
        server = landing.host if landing is not None else Host(*driver.landed_on(connection))
        pooler_error(driver, failure, server)
        # A report is stale behind a pooler whose host was found out (connecting.trust).
        believed = server not in host_status.distrusted and not driver.is_closed(connection)
        role = reported_role(driver, connection) if believed else None
        driver.close_quietly(connection)
        if give_back:
            self.putconn(connection)  # closed: discarded and replaced
        announce(
            sender=connector.sender,
            alias=connector.alias,
            server=server,
            error=failure,
            what="failed its check at checkout",
            consequence="idle connections replaced",
            recheck=connector.policy.host_recheck,
            demoted_to=None if role is None else HostState.of(role),
            pool=self,
            cause="closed_while_idle",
        )


def build_pool(wrapper: Any) -> FailoverPool:
    """The pool of one alias (Django keeps one per alias, shared by every thread)."""
    settings = wrapper.failover_settings  # validates OPTIONS["pool"] too
    pool_options = wrapper.settings_dict["OPTIONS"]["pool"]
    options = {} if pool_options is True else dict(pool_options)
    kwargs = wrapper.failover_connection_params()
    # Django's pool opens connections in autocommit; Django sets the mode later.
    kwargs["autocommit"] = True
    return FailoverPool(
        connector=wrapper.make_connector(settings),
        # The checks of a checkout are the pool's own (see getconn()); a check
        # given in OPTIONS (Django 6.1+) runs as well, in psycopg_pool's way.
        health_checks=wrapper.settings_dict["CONN_HEALTH_CHECKS"],
        kwargs=kwargs,
        open=False,  # Django opens the pool on first use
        configure=wrapper._configure_connection,
        **options,
    )


def after_fork_in_child() -> None:
    """The parent's pools are not the child's: each alias gets a new one on first use."""
    pools = PostgresWrapper._connection_pools  # Django's, per alias, for every thread
    for alias, pool in list(pools.items()):
        if isinstance(pool, FailoverPool):
            del pools[alias]
            # psycopg_pool's own attributes: its close() would wait for the worker
            # threads and close the parent's sessions. Closed so, its close() and
            # __del__ do nothing.
            pool._closed = True
            idle = list(pool._pool)
            pool._pool.clear()
            for connection in idle:
                let_go(pool.connector.driver, connection)


# The checked-out connections are the wrappers' (see inherited.after_fork_in_child()).
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=after_fork_in_child)
