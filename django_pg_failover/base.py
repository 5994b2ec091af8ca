"""The database wrapper: Django's PostgreSQL backend plus a host list and failover.

The overrides are few and each delegates to a small module:

- :meth:`DatabaseWrapper.get_connection_params` turns ``HOST``/``PORT`` into
  libpq's multi-host lists (:mod:`.hosts`), in the order the process-wide host
  status memory suggests (:mod:`.status`);
- :meth:`DatabaseWrapper.ensure_connection` retries a failed connect with
  backoff (:mod:`.policy`), never inside an atomic block;
- :class:`FailoverErrorWrapper` sees every driver error; one that lost the
  connection, or found the server read-only under a read-write session
  (:mod:`.errors`), closes it so that the next use reconnects;
- with ``retry_reads``, cursors re-run a lost plain SELECT once (:mod:`.reads`).

Nothing here runs on the healthy path of a query beyond what Django runs.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.utils import DatabaseErrorWrapper, OperationalError, ProgrammingError
from django.db.utils import Error as DjangoDatabaseError
from django.utils.asyncio import async_unsafe
from django.utils.functional import cached_property

try:
    from django.db.backends.postgresql import base as postgresql
except ImproperlyConfigured as exc:
    raise ImproperlyConfigured(
        "django_pg_failover needs psycopg2: pip install 'django-pg-failover[binary]' "
        "(or psycopg2 built against your libpq)"
    ) from exc

if postgresql.is_psycopg3:
    import psycopg

    raise ImproperlyConfigured(
        "django_pg_failover supports psycopg2 only for now, but Django uses psycopg "
        f"{psycopg.__version__} because it is installed. Uninstall psycopg (psycopg 3) "
        "from this environment and install psycopg2, e.g. "
        "pip install 'django-pg-failover[binary]'."
    )

# After the driver checks above: these import psycopg2.
from . import errors, signals
from .client import DatabaseClient
from .conf import FailoverSettings
from .creation import DatabaseCreation
from .errors import HostFailure
from .exceptions import SettingsError
from .hosts import Host, hosts_from_libpq_params, libpq_host_params
from .options import DEFAULT_CONNECT_TIMEOUT, OPTIONS_CHECK, WRITABLE_SESSION_ATTRS
from .policy import FailoverPolicy
from .reads import (
    ReadRetryCursorDebugWrapper,
    ReadRetryCursorWrapper,
    has_raw_sql_param,
    is_retryable_read,
    leaves_session_unchanged,
)
from .status import host_status

logger = logging.getLogger("django_pg_failover")


class FailoverErrorWrapper(DatabaseErrorWrapper):
    """Django's error translation, first telling the wrapper what went wrong."""

    def __exit__(self, exc_type, exc_value, traceback):
        if exc_type is None:
            return
        self.wrapper.on_driver_error(exc_value)
        return super().__exit__(exc_type, exc_value, traceback)


class DatabaseWrapper(postgresql.DatabaseWrapper):
    client_class = DatabaseClient
    creation_class = DatabaseCreation

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The server the open connection reached (kept to report its loss).
        self.server: Host | None = None
        self._settings_key: str | None = None
        self._settings: FailoverSettings | None = None
        # Copied from the policy at connect time: read on every cursor.
        self._retry_reads = False
        self._lost_error: BaseException | None = None
        # Something ran on this connection that a new session would lack.
        self._session_changed = False
        #: The connection was lost with autocommit off (outside atomic blocks):
        #: its transaction is gone, and no new connection opens in its place until
        #: the code says how to go on (``set_autocommit()``), or the request ends.
        self.transaction_lost = False
        #: The connection was lost inside the atomic block still open: until it
        #: exits, nothing connects, and a commit of the block raises.
        self.atomic_block_lost = False

    @cached_property
    def wrap_database_errors(self) -> FailoverErrorWrapper:
        return FailoverErrorWrapper(self)

    # -- settings -----------------------------------------------------------------

    @property
    def failover_settings(self) -> FailoverSettings:
        """HOST, PORT and OPTIONS validated; parsed again only when they change."""
        settings_dict = self.settings_dict
        key = repr((settings_dict["HOST"], settings_dict["PORT"], settings_dict["OPTIONS"]))
        if key != self._settings_key:
            self._settings = FailoverSettings.from_settings_dict(
                settings_dict, self.alias, errors.libpq_version(), errors.is_libpq_keyword
            )
            self._settings_key = key
        return self._settings

    if hasattr(postgresql.DatabaseWrapper, "pool"):  # Django 5.1+

        @property
        def pool(self) -> Any:
            # Django reads OPTIONS here first (before any connect): name the alias
            # instead of failing with AttributeError when OPTIONS is not a dict.
            if not isinstance(self.settings_dict["OPTIONS"], Mapping):
                raise SettingsError(
                    self.alias,
                    ("OPTIONS",),
                    f"a {type(self.settings_dict['OPTIONS']).__name__} is not a dict",
                    OPTIONS_CHECK,
                )
            return super().pool

    @property
    def failover_policy(self) -> FailoverPolicy:
        return self.failover_settings.policy

    @property
    def target_session_attrs(self) -> str:
        return self.failover_settings.target_session_attrs

    def get_connection_params(self) -> dict[str, Any]:
        settings = self.failover_settings
        params = super().get_connection_params()
        params.pop("failover", None)
        params["target_session_attrs"] = settings.target_session_attrs
        params.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        # The shuffle is ours: libpq's would undo the status ordering.
        balanced = params.pop("load_balance_hosts", None) == "random"
        hosts = settings.hosts
        if settings.policy.host_recheck > 0:
            hosts = host_status.order(hosts, settings.target_session_attrs, shuffle=balanced)
        elif balanced:
            hosts = tuple(random.sample(hosts, len(hosts)))
        params.update(libpq_host_params(hosts))
        return params

    # -- connecting ---------------------------------------------------------------

    @async_unsafe
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        connection = super().get_new_connection(conn_params)
        policy = self.failover_policy
        self.server = Host(*errors.landed_on(connection))
        self._retry_reads = policy.retry_reads
        self._session_changed = False
        host_status.record_connected(
            hosts_from_libpq_params(conn_params),
            self.server,
            errors.server_role(connection),
            conn_params["target_session_attrs"],
            policy.host_recheck,
        )
        return connection

    def ensure_connection(self) -> None:
        """Connect if needed, retrying with backoff while no suitable server answers.

        Inside an atomic block there is no retry: a transaction whose
        connection was lost is gone, and no new connection may be opened in
        the middle of it. (Not decorated with ``async_unsafe``: Django's own
        method, called on every path, already is, and this runs per query.)
        """
        if self.connection is not None:
            return super().ensure_connection()
        self._settle_lost_manual_transaction()
        if self.in_atomic_block:
            if self.closed_in_transaction or self.atomic_block_lost:
                # Django 5.1+ says the same; 4.2 would silently reconnect.
                raise ProgrammingError("Cannot open a new connection in an atomic block.")
            return super().ensure_connection()
        self.atomic_block_lost = False  # that block has exited
        if self.transaction_lost:
            raise ProgrammingError(
                f"database alias {self.alias!r}: the connection was lost while autocommit "
                "was off, and the transaction with it. Call set_autocommit() to choose the "
                "mode of the next connection."
            )

        policy = self.failover_policy
        started = time.monotonic()
        deadline = started + policy.retry_timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                super().ensure_connection()
            except OperationalError as exc:
                cause = exc.__cause__ or exc
                self._drop_half_open_connection()
                failures = self._report_failed_attempt(cause, attempt, policy)
                elapsed = time.monotonic() - started
                if errors.connect_error_is_permanent(cause):
                    logger.error(
                        "database alias %r: connection refused for good (%s), not retried",
                        self.alias,
                        "; ".join(f"{f.address} {f.reason}" for f in failures)
                        or type(cause).__name__,
                    )
                    raise self._connect_error(
                        cause, failures, attempt, elapsed, "not retried: waiting will not fix it"
                    ) from cause
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    logger.error(
                        "database alias %r: giving up after %d attempt(s) in %.2fs",
                        self.alias,
                        attempt,
                        elapsed,
                    )
                    raise self._connect_error(
                        cause, failures, attempt, elapsed, "retry_timeout reached"
                    ) from cause
                # The last pause is cut short so that one more try lands on the deadline.
                pause = min(policy.backoff(attempt), remaining)
                logger.warning(
                    "database alias %r: connection attempt %d failed after %.2fs (%s); "
                    "retrying in %.2fs",
                    self.alias,
                    attempt,
                    elapsed,
                    "; ".join(f"{f.address} {f.reason}" for f in failures) or type(cause).__name__,
                    pause,
                )
                time.sleep(pause)
            else:
                self._report_connected(attempt, time.monotonic() - started)
                return

    def _drop_half_open_connection(self) -> None:
        # connect() can fail after the driver connected (in init_connection_state).
        if self.connection is not None:
            with suppress(errors.Database.Error):
                self.connection.close()
            self.connection = None
            self.server = None

    def _report_failed_attempt(
        self, cause: BaseException, attempt: int, policy: FailoverPolicy
    ) -> list[HostFailure]:
        failures = errors.host_failures(cause)
        host_status.record_failures(failures, policy.host_recheck)
        for failure in failures:
            logger.debug(
                "database alias %r: attempt %d: %s failed: %s",
                self.alias,
                attempt,
                failure.address,
                failure.reason,
            )
            signals.host_attempt_failed.send(
                sender=self.__class__,
                alias=self.alias,
                host=failure.host,
                port=failure.port,
                reason=failure.reason,
                attempt=attempt,
            )
        return failures

    def _report_connected(self, attempts: int, elapsed: float) -> None:
        if self.server is None:  # not connected through get_new_connection()
            return
        role = errors.server_role(self.connection)
        logger.log(
            logging.INFO if attempts > 1 else logging.DEBUG,
            "database alias %r: connected to %s (%s) after %d attempt(s) in %.2fs",
            self.alias,
            self.server,
            role or "role not reported",
            attempts,
            elapsed,
        )
        signals.connection_established.send(
            sender=self.__class__,
            alias=self.alias,
            host=self.server.host,
            port=self.server.port,
            role=role,
            attempts=attempts,
            elapsed=elapsed,
        )

    def _connect_error(
        self,
        cause: BaseException,
        failures: list[HostFailure],
        attempts: int,
        elapsed: float,
        outcome: str,
    ) -> OperationalError:
        lines = [f"  {f.address}: {f.reason}" for f in failures] or [
            "  " + line for line in str(cause).strip().splitlines()
        ]
        return OperationalError(
            f"could not connect to database alias {self.alias!r} "
            f"(target_session_attrs={self.target_session_attrs}) after {attempts} "
            f"attempt(s) in {elapsed:.1f}s, {outcome}:\n" + "\n".join(lines)
        )

    # -- losing a connection ----------------------------------------------------

    def on_driver_error(self, exc: BaseException) -> None:
        """Close a connection that the error shows dead or demoted.

        The error still reaches the caller; nothing is re-run here. Outside an
        atomic block and in autocommit mode, the next database use reconnects.
        Inside a block, no new connection opens until the block exits (the
        server rolled the transaction back); with autocommit off, not until the
        code calls ``set_autocommit()`` or the request ends.
        """
        if self.connection is None:
            return
        lost = errors.connection_lost(exc, self.connection)
        if not lost and not (
            self.target_session_attrs in WRITABLE_SESSION_ATTRS
            and errors.server_read_only(exc)
            and errors.server_demoted(self.connection)
        ):
            return
        self._report_lost(exc, demoted=not lost)
        if self.in_atomic_block:
            # Not close(): Django would mark the block "closed in transaction" and
            # let it exit without a word even when the code swallowed the loss
            # inside it. Dropped like this, the next query in the block fails at
            # once and the block's commit raises (see commit()).
            with suppress(errors.Database.Error):
                self.connection.close()
            self.connection = None
            self.atomic_block_lost = True
            if not self.commit_on_exit:  # the block is part of a manual transaction
                self.transaction_lost = True
        else:
            with suppress(errors.Database.Error, DjangoDatabaseError):
                self.close()
            if not self.autocommit:
                self.transaction_lost = True
        self._lost_error = exc if lost else None

    def _report_lost(self, exc: BaseException, demoted: bool) -> None:
        server, in_atomic_block = self.server, self.in_atomic_block
        if server is not None:
            host_status.record_lost(server, demoted, self.failover_policy.host_recheck)
        first_line = next(iter(str(exc).strip().splitlines()), "")
        logger.warning(
            "database alias %r: connection to %s %s (%s: %s); %s",
            self.alias,
            server,
            "turned read-only" if demoted else "lost",
            type(exc).__name__,
            first_line,
            "the transaction is lost"
            if in_atomic_block or not self.autocommit
            else "the next query reconnects",
        )
        self.server = None
        signals.connection_lost.send(
            sender=self.__class__,
            alias=self.alias,
            host=server.host if server else None,
            port=server.port if server else None,
            error=exc,
            in_atomic_block=in_atomic_block,
        )

    def is_usable(self) -> bool:
        # Django's health checks (CONN_HEALTH_CHECKS, and after errors) close a
        # connection that fails this; report the loss like any other.
        usable = super().is_usable()
        if not usable and self.connection is not None:
            self._report_lost(errors.Database.OperationalError("health check failed"), False)
        return usable

    def _settle_lost_manual_transaction(self) -> None:
        """Leave the state Django keeps after an atomic block, opened with autocommit
        off, lost its connection: the block has exited (no atomic block is open) but
        ``in_atomic_block`` stays set, and no connection could ever open again. What
        is left is the manual transaction, and it is lost.
        """
        if self.in_atomic_block and self.closed_in_transaction and not self.atomic_blocks:
            self.in_atomic_block = False
            self.closed_in_transaction = False
            self.savepoint_ids = []
            self.transaction_lost = True

    def close(self) -> None:
        self._settle_lost_manual_transaction()
        self.transaction_lost = False
        super().close()

    def close_if_unusable_or_obsolete(self) -> None:
        # A request boundary: a transaction lost in the last request is its business.
        self._settle_lost_manual_transaction()
        self.transaction_lost = False
        super().close_if_unusable_or_obsolete()

    def set_autocommit(self, autocommit: bool, *args: Any, **kwargs: Any) -> None:
        self.transaction_lost = False  # the code has chosen how to go on
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
        # Django's commit() does nothing without a connection: after a loss it
        # would report success for a transaction the server rolled back.
        if self.transaction_lost:
            raise OperationalError(
                f"database alias {self.alias!r}: the connection was lost while autocommit was "
                "off; nothing since the last commit was committed. Call set_autocommit() to "
                "choose the mode of the next connection."
            )
        if self.atomic_block_lost:
            raise OperationalError(
                f"database alias {self.alias!r}: the connection was lost inside this atomic "
                "block (the error was raised there); nothing of the block was committed"
            )
        super().commit()

    def rollback(self) -> None:
        self.atomic_block_lost = False  # what the server did already
        super().rollback()

    def savepoint_rollback(self, sid: str) -> None:
        # The savepoint went with the connection. Raising here would make Django
        # mark the enclosing block for a silent rollback instead of a commit that
        # raises.
        if not self.atomic_block_lost:
            super().savepoint_rollback(sid)

    def savepoint_commit(self, sid: str) -> None:
        if not self.atomic_block_lost:
            super().savepoint_commit(sid)

    # -- retrying reads -------------------------------------------------------------

    def make_cursor(self, cursor: Any) -> Any:
        if self._retry_reads:
            return ReadRetryCursorWrapper(cursor, self)
        return super().make_cursor(cursor)

    def make_debug_cursor(self, cursor: Any) -> Any:
        if self._retry_reads:
            return ReadRetryCursorDebugWrapper(cursor, self)
        return super().make_debug_cursor(cursor)

    def note_statement(self, sql: Any, params: Any = None) -> None:
        if not self._session_changed and (
            not leaves_session_unchanged(sql) or has_raw_sql_param(params)
        ):
            self._session_changed = True

    def read_retry_possible(self, sql: Any, params: Any) -> bool:
        """Before running ``sql``: could the rule of :mod:`.reads` let it run again?"""
        return (
            self.connection is not None
            and not self.in_atomic_block
            and self.autocommit
            and not self._session_changed
            and errors.transaction_idle(self.connection)
            and is_retryable_read(sql)
            and not has_raw_sql_param(params)
        )

    def may_retry_read(self, exc: OperationalError, raw_cursor: Any) -> bool:
        """After it failed: was the connection lost under it (and closed since)?"""
        return (
            self._retry_reads
            and exc.__cause__ is not None
            and exc.__cause__ is self._lost_error
            and self.connection is None
            and not self.in_atomic_block
            and self.autocommit
            and getattr(raw_cursor, "name", None) is None
        )
