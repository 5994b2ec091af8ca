"""The database wrapper: Django's PostgreSQL backend plus a host list and failover.

The overrides are few and each delegates to a module of its own:

- ``Database.connect`` (what Django's ``get_new_connection`` calls) walks the
  host list with a :class:`~.connect.Connector`: one server at a time in the
  order the host status memory suggests, overtaking silent hosts, retried
  until ``retry_timeout``; with ``OPTIONS["pool"]`` the pool's connections come
  from the same connector (:mod:`.pool`);
- :meth:`DatabaseWrapper.connect` refuses to open a connection where a lost
  transaction is still open (:mod:`.losing.loss`);
- :class:`FailoverErrorWrapper` sees every driver error; one that lost the
  connection, or found the server read-only under a read-write session, closes
  it so that the next use reconnects (:mod:`.losing.loss`);
- with ``retry_reads``, cursors re-run a lost plain SELECT once (:mod:`.reads.retry`);
- with ``read_your_writes``, the primary alias's cursors and commits mark the
  thread's scope, and the replica alias's reads run where the scope's writes
  show (:mod:`.causal`);
- after ``fork()``, the child lets go of the connections it inherited, without
  a word to their servers, and opens its own (:mod:`.losing.inherited`).

The driver (psycopg 3 or psycopg2, as Django chooses) is reached through
:mod:`.drivers` only. Nothing here runs on the healthy path of a query beyond
what Django runs.
"""

from __future__ import annotations

import copy
from typing import Any

from django.db import connections
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.utils import DatabaseErrorWrapper, OperationalError
from django.utils.functional import cached_property

from django_pg_failover.drivers import get_driver

# Before Django's backend loads: a missing or too old driver gets our one clear
# error, not Django's.
driver = get_driver()

from django.db.backends.postgresql import base as postgresql

from django_pg_failover.causal.cursors import CURSORS
from django_pg_failover.causal.scope import _local as causal_local
from django_pg_failover.causal.targets import primary_aliases
from django_pg_failover.client import DatabaseClient
from django_pg_failover.connecting.attempt import Landing
from django_pg_failover.connecting.connector import Connector
from django_pg_failover.creation import DatabaseCreation
from django_pg_failover.losing import inherited
from django_pg_failover.losing.liveness import idle_connection_failure
from django_pg_failover.losing.loss import ConnectionLoss
from django_pg_failover.losing.stall import stall_watch
from django_pg_failover.reads.retry import (
    ReadRetryCursorDebugWrapper,
    ReadRetryCursorWrapper,
    ReadRetryState,
)
from django_pg_failover.settings.causal import PRIMARY_ROLES, check_target_exists
from django_pg_failover.settings.conf import FailoverSettings
from django_pg_failover.settings.hosts import Host
from django_pg_failover.settings.options import DEFAULT_CONNECT_TIMEOUT, check_options_type
from django_pg_failover.settings.policy import FailoverPolicy


class FailoverErrorWrapper(DatabaseErrorWrapper):
    """Around every call to the driver: note it for the stall watchdog (:mod:`.losing.stall`),
    and tell the wrapper what went wrong before Django translates the error.

    Django runs ``__enter__`` and ``__exit__`` around every call (its own do
    nothing): these replace them at no extra call. The bodies stay inline,
    attribute reads and writes only (no clock read either), as the healthy
    path of every query and fetch runs them.
    """

    def __enter__(self) -> None:
        wrapper = self.wrapper
        if wrapper.connected_stall_timeout is not None:
            if not wrapper.call_depth:
                # Small numbers only: Python keeps one object of each (nothing allocated).
                wrapper.call_number = (wrapper.call_number + 1) & 255
            wrapper.call_depth += 1

    def __exit__(self, exc_type, exc_value, traceback):
        wrapper = self.wrapper
        if wrapper.call_depth:
            wrapper.call_depth -= 1
        if exc_type is None:
            return
        given_up = stall_watch.given_up(wrapper)  # before closing starts another call
        wrapper.loss.on_driver_error(exc_value, stalled=given_up is not None)
        if given_up is not None:
            raise OperationalError(f"database alias {wrapper.alias!r}: {given_up}") from exc_value
        return super().__exit__(exc_type, exc_value, traceback)


def _settings_copy(source: tuple) -> tuple | None:
    """A copy of HOST, PORT and OPTIONS that later values compare equal to until they
    change; None when the values do not allow one (an object without a copy that
    equals it)."""
    try:
        snapshot = copy.deepcopy(source)
    except Exception:
        return None
    return snapshot if snapshot == source else None


class HostListDatabase:
    """The driver module as Django's backend calls it; ``connect()`` walks the host list."""

    def __init__(self, wrapper: DatabaseWrapper) -> None:
        self._wrapper = wrapper

    def connect(self, **params: Any) -> Any:
        # Django has just read get_connection_params(): the settings are current, and
        # so is the connector if there is one.
        wrapper = self._wrapper
        landing = (wrapper._connector or wrapper.connector).connect(params)
        wrapper.landing = landing
        return landing.connection

    def __getattr__(self, name: str) -> Any:
        return getattr(driver.module, name)


class DatabaseWrapper(postgresql.DatabaseWrapper):
    if not hasattr(postgresql.DatabaseWrapper, "_connection_pools"):  # before Django 5.1
        _connection_pools: dict[str, Any] = {}  # no pool: stays empty

    client_class = DatabaseClient
    creation_class = DatabaseCreation
    #: Losing the connection: its flags and rules (:mod:`.losing.loss`).
    loss_class = ConnectionLoss

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.Database = HostListDatabase(self)
        self.driver = driver
        #: The server the open connection reached (kept to report its loss).
        self.server: Host | None = None
        #: The open connection's socket (a stalled call is woken through it).
        self.server_fd: int | None = None
        #: How the open connection was made (None: opened by a pool's worker).
        self.landing: Landing | None = None
        #: The server session of the open connection, as the stall watchdog finds it
        #: again: its process id, and when the attempt that opened it began and
        #: ended (monotonic); None if unknown.
        self.server_session: tuple[int, float, float] | None = None
        #: stall_timeout for the open connection (None: not watched), read per call.
        self.connected_stall_timeout: float | None = None
        #: Calls in flight on the connection (nested error wrappers), the number
        #: of the outermost, and why the stall watchdog gave it up (:mod:`.losing.stall`).
        self.call_depth = 0
        self.call_number = 0
        self.call_given_up: tuple[int, str] | None = None
        self._settings_source: tuple | None = None
        self._settings_key: str | None = None
        self._settings: FailoverSettings | None = None
        self._connector: Connector | None = None
        self.reads = ReadRetryState()
        #: read_your_writes (:mod:`.causal`), set per connection: "write" on a primary
        #: alias a replica alias names, "read" on that replica alias, else None; the
        #: primary alias a replica alias reads for, how long it waits, and the
        #: replay position its server last reported (0: not known).
        self.causal_role: str | None = None
        self.causal_target: str | None = None
        self.causal_wait = 0.0
        self.causal_replayed: tuple[int, int] = (0, 0)
        #: The open connection's server incarnation, once asked (:mod:`.causal.routing`).
        self.causal_server: tuple | None = None
        self._causal_unknown = True
        self.loss = self.loss_class(self)
        inherited.note(self)

    @cached_property
    def wrap_database_errors(self) -> FailoverErrorWrapper:
        return FailoverErrorWrapper(self)

    # -- settings -----------------------------------------------------------------

    @property
    def failover_settings(self) -> FailoverSettings:
        """HOST, PORT and OPTIONS validated; parsed again only when they change.

        Read on every connect: the values are compared with a copy of what was
        parsed (a change made in place is seen too), without building anything.
        """
        settings_dict = self.settings_dict
        source = (settings_dict["HOST"], settings_dict["PORT"], settings_dict["OPTIONS"])
        if self._settings_source is not None:
            changed = source != self._settings_source
        else:  # values a copy cannot stand for (see _settings_copy()): by their text
            changed = repr(source) != self._settings_key
        if changed or self._settings is None:
            self._settings = FailoverSettings.from_settings_dict(settings_dict, self.alias, driver)
            self._settings_source = _settings_copy(source)
            self._settings_key = None if self._settings_source is not None else repr(source)
            self._connector = None
        return self._settings

    @property
    def failover_policy(self) -> FailoverPolicy:
        return self.failover_settings.policy

    @property
    def target_session_attrs(self) -> str:
        return self.failover_settings.target_session_attrs

    @property
    def connector(self) -> Connector:
        settings = self.failover_settings
        if self._connector is None:
            self._connector = self.make_connector(settings)
        return self._connector

    def make_connector(self, settings: FailoverSettings) -> Connector:
        return Connector(
            alias=self.alias,
            sender=self.__class__,
            driver=driver,
            hosts=settings.hosts,
            target_session_attrs=settings.target_session_attrs,
            policy=settings.policy,
            shuffle=settings.load_balance,
            attempt_delay=settings.policy.attempt_delay,
            password=settings.password,
        )

    def get_connection_params(self) -> dict[str, Any]:
        if self.alias in self._connection_pools:
            # A pool's checkout: Django's connect() asks, and the pool (built with
            # the parameters below) ignores the answer. Nothing added to stock's.
            return super().get_connection_params()
        return self.failover_connection_params()

    def failover_connection_params(self) -> dict[str, Any]:
        """The alias's connection parameters as the backend connects with them."""
        settings = self.failover_settings
        params = super().get_connection_params()
        params.pop("failover", None)
        params.pop("load_balance_hosts", None)  # the backend shuffles the hosts itself
        params["target_session_attrs"] = settings.target_session_attrs
        params.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        # The whole list, as libpq writes it: what the connector walks is settings.hosts.
        params.update(settings.libpq_host_params)
        return params

    # -- connecting ---------------------------------------------------------------

    if hasattr(postgresql.DatabaseWrapper, "pool"):  # Django 5.1+

        @property
        def pool(self) -> Any:
            pool = self._connection_pools.get(self.alias)
            if pool is not None:  # read several times per connect: the short way first
                return pool
            options = self.settings_dict["OPTIONS"]
            if type(options) is dict and not options.get("pool"):
                return None  # what Django's property says then, the short way
            # Read here before anything connects: name the alias, not an AttributeError.
            check_options_type(options, self.alias)
            if self.alias == NO_DB_ALIAS or not options.get("pool"):
                return super().pool
            if self.alias not in self._connection_pools:
                self.failover_settings  # noqa: B018 - validates OPTIONS["pool"] first
                from django_pg_failover.pool import build_pool

                self._connection_pools.setdefault(self.alias, build_pool(self))
            return self._connection_pools[self.alias]

    def connect(self) -> None:
        if self.in_atomic_block or self.loss.pending:
            self.loss.check_can_connect()
        super().connect()

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:  # async_unsafe: super()
        # This connection's part in read_your_writes (the settings are current here).
        settings = self._settings or self.failover_settings
        self.causal_replayed = (0, 0)
        self.causal_server = None
        if settings.policy.read_your_writes is not None or self.causal_role == "read":
            self.causal_connected_as_replica(settings)
        elif self._causal_unknown:
            # Once per wrapper (DATABASES does not change); an alias added later
            # that names this one tells it when it connects (below).
            self._causal_unknown = False
            self.causal_role = "write" if self.alias in primary_aliases() else None
        connection = super().get_new_connection(conn_params)
        landing, self.landing = self.landing, None
        if landing is None:  # a pool's connection (Django 5.1+), opened by its worker
            landing = getattr(connection, "_pg_failover_landing", None)
        if landing is not None:
            self.server = landing.host
            self.server_session = (landing.pid, landing.began, landing.ended)
            self.server_fd = landing.fd
        else:
            self.server = Host(*driver.landed_on(connection))
            self.server_session = None
            self.server_fd = driver.socket_fd(connection)
        # Django's connect() has just validated the settings (get_connection_params()).
        policy = (self._settings or self.failover_settings).policy
        self.connected_stall_timeout = policy.stall_timeout if self.server_fd is not None else None
        # Opened inside ensure_connection()'s error wrapper: that was no call to this server.
        self.call_depth = 0
        self.call_given_up = None
        stall_watch.watch(self)
        self.loss.error = None
        self.reads.connected(policy.retry_reads)
        return connection

    def causal_connected_as_replica(self, settings: FailoverSettings) -> None:
        target = settings.policy.read_your_writes
        if target is None or settings.target_session_attrs in PRIMARY_ROLES:
            # A test mirror's replica alias reads from the primary: nothing to do.
            self.causal_role, self.causal_target = None, None
            self._causal_unknown = True  # may still be a primary alias: look next time
            return
        check_target_exists(connections.settings, self.alias, target)
        primary = connections[target]
        if primary.causal_role is None:  # it connected before this alias was added
            primary.causal_role, primary._causal_unknown = "write", False
        self.causal_role, self.causal_target = "read", target
        self.causal_wait = settings.policy.read_your_writes_wait

    @cached_property
    def pg_version(self) -> int:
        """The server's version, as Django's backend reads it.

        Django asks it through a temporary connection when none is open, for
        feature flags; Django 6.1's system checks ask it of every alias
        (``manage.py check`` with a model that has a ``GeneratedField``, for
        one). Until this process has reached a server of the list, that
        question gets one pass over the hosts and waits for no failover: with
        every host down, ``check`` fails like Django's own backend, within
        about ``connect_timeout``, instead of waiting ``retry_timeout`` per
        alias. Once a server of the list has answered, a question asked
        during a failover waits like any connect (the query that needs the
        answer would wait for a server anyway).
        """
        connector = self.connector
        if self.connection is not None or connector.reached_before:
            version: int = postgresql.DatabaseWrapper.pg_version.func(self)
            return version
        landing = connector.connect(self.failover_connection_params(), once=True)
        try:
            return int(landing.connection.info.server_version)
        finally:
            driver.close_quietly(landing.connection)

    # -- losing a connection ----------------------------------------------------

    def is_usable(self) -> bool:
        if self.connection is None:
            return False
        try:
            # A driver cursor, like Django's own check: no query logging or wrappers.
            with stall_watch.guard(self), self.connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except driver.module.Error as exc:
            # An aborted transaction fails this check too: only a dead session is a loss.
            if driver.connection_lost(exc, self.connection):
                self.loss.report(exc, cause="closed_while_idle")
            return False
        return True

    def close(self) -> None:
        self.loss.request_boundary()
        super().close()

    def close_if_unusable_or_obsolete(self) -> None:
        self.loss.request_boundary()
        super().close_if_unusable_or_obsolete()
        self._drop_if_closed_by_server()

    def _drop_if_closed_by_server(self) -> None:
        """A connection kept between requests: drop it now if its server hung up."""
        if self.connection is None or self.in_atomic_block:
            return
        failure = idle_connection_failure(driver, self.connection)
        if failure is not None:
            self.loss.report(failure, cause="closed_while_idle")
            driver.close_quietly(self.connection)
            self.close()

    def set_autocommit(self, autocommit: bool, *args: Any, **kwargs: Any) -> None:
        self.loss.transaction_lost = False  # the code has chosen how to go on
        if (
            autocommit
            and self.connection is None
            and self.settings_dict["AUTOCOMMIT"]
            and not self.run_commit_hooks_on_set_autocommit_on
        ):
            # The next connection starts in autocommit anyway. Connecting here, as
            # Django does at the end of every atomic block, would make a block
            # whose connection was lost wait for a new primary (retry_timeout)
            # before its error could reach the caller.
            self.validate_no_atomic_block()
            self.autocommit = True
            return
        super().set_autocommit(autocommit, *args, **kwargs)

    def commit(self) -> None:
        self.loss.check_commit()
        super().commit()

    def _commit(self) -> None:
        if self.causal_role == "write":
            causal_local.scope.written.add(self.alias)
        self.loss.committing = True
        try:
            super()._commit()
        finally:
            self.loss.committing = False

    def rollback(self) -> None:
        self.loss.atomic_block_lost = False  # what the server did already
        super().rollback()

    def savepoint_rollback(self, sid: str) -> None:
        # The savepoint went with the connection. Raising here would make Django
        # mark the enclosing block for a silent rollback instead of a commit that
        # raises.
        if not self.loss.atomic_block_lost:
            super().savepoint_rollback(sid)

    def savepoint_commit(self, sid: str) -> None:
        if not self.loss.atomic_block_lost:
            super().savepoint_commit(sid)

    # -- retrying reads -------------------------------------------------------------

    def make_cursor(self, cursor: Any) -> Any:
        if self.causal_role is not None:
            return CURSORS[self.causal_role, self.reads.enabled, False](cursor, self)
        if self.reads.enabled:
            return ReadRetryCursorWrapper(cursor, self)
        return super().make_cursor(cursor)

    def make_debug_cursor(self, cursor: Any) -> Any:
        if self.causal_role is not None:
            return CURSORS[self.causal_role, self.reads.enabled, True](cursor, self)
        if self.reads.enabled:
            return ReadRetryCursorDebugWrapper(cursor, self)
        return super().make_debug_cursor(cursor)
