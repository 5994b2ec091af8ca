"""The database wrapper: Django's PostgreSQL backend plus a host list and failover.

The overrides are few and each delegates to a small module:

- :meth:`DatabaseWrapper.get_connection_params` turns ``HOST``/``PORT`` into
  libpq's multi-host lists (:mod:`.hosts`) in the order the host status
  memory suggests (:mod:`.status`);
- :meth:`DatabaseWrapper.ensure_connection` retries a failed connect with
  backoff (:mod:`.policy`), never inside an atomic block;
- :class:`FailoverErrorWrapper` sees every driver error; one that lost the
  connection (:mod:`.errors`) closes it so the next use reconnects.
"""

from __future__ import annotations

import logging
import random
import time
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

from . import errors, signals
from .client import DatabaseClient
from .creation import DatabaseCreation
from .hosts import Host, hosts_from_libpq_params, libpq_host_params, parse_hosts
from .options import (
    DEFAULT_CONNECT_TIMEOUT,
    WRITABLE_SESSION_ATTRS,
    target_session_attrs,
    validate_options,
)
from .policy import FailoverPolicy
from .status import host_status

logger = logging.getLogger("django_pg_failover")


class FailoverErrorWrapper(DatabaseErrorWrapper):
    """Django's error translation, first telling the wrapper what went wrong."""

    def __exit__(self, exc_type, exc_value, traceback):
        if exc_type is not None:
            self.wrapper.on_driver_error(exc_value)
        return super().__exit__(exc_type, exc_value, traceback)


class DatabaseWrapper(postgresql.DatabaseWrapper):
    client_class = DatabaseClient
    creation_class = DatabaseCreation

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The server the open connection reached, kept for reports after it dies.
        self.server: Host | None = None

    @cached_property
    def wrap_database_errors(self) -> FailoverErrorWrapper:
        return FailoverErrorWrapper(self)

    # -- settings -----------------------------------------------------------------

    @property
    def failover_policy(self) -> FailoverPolicy:
        return FailoverPolicy.from_options(
            self.settings_dict["OPTIONS"].get("failover"), self.alias
        )

    @property
    def hosts(self) -> tuple[Host, ...]:
        return parse_hosts(self.settings_dict["HOST"], self.settings_dict["PORT"], self.alias)

    @property
    def target_session_attrs(self) -> str:
        return target_session_attrs(self.settings_dict["OPTIONS"])

    def get_connection_params(self) -> dict[str, Any]:
        options = self.settings_dict["OPTIONS"]
        validate_options(options, errors.libpq_version(), self.alias)
        policy = self.failover_policy
        hosts = self.hosts
        tsa = self.target_session_attrs
        params = super().get_connection_params()
        params.pop("failover", None)
        params["target_session_attrs"] = tsa
        params.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        balanced = params.pop("load_balance_hosts", None) == "random"
        if policy.host_recheck > 0:
            hosts = host_status.order(hosts, tsa, shuffle=balanced)
        elif balanced:
            hosts = tuple(random.sample(hosts, len(hosts)))
        params.update(libpq_host_params(hosts))
        return params

    # -- connecting ---------------------------------------------------------------

    @async_unsafe
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        connection = super().get_new_connection(conn_params)
        host, port = errors.landed_on(connection)
        self.server = Host(host, port)
        host_status.record_connected(
            hosts_from_libpq_params(conn_params),
            self.server,
            errors.server_role(connection),
            conn_params["target_session_attrs"],
            self.failover_policy.host_recheck,
        )
        return connection

    @async_unsafe
    def ensure_connection(self) -> None:
        """Connect if needed, retrying with backoff while no suitable server answers.

        Inside an atomic block there is no retry: a transaction whose
        connection was lost is gone, and Django must not open a fresh
        connection in the middle of it.
        """
        if self.connection is not None:
            return super().ensure_connection()
        if self.in_atomic_block:
            if self.closed_in_transaction:
                # Django 5.1+ says the same; 4.2 would silently reconnect.
                raise ProgrammingError("Cannot open a new connection in an atomic block.")
            return super().ensure_connection()

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
                failures = self._report_failed_attempt(cause, attempt)
                elapsed = time.monotonic() - started
                if errors.connect_error_is_permanent(cause):
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

    def _report_failed_attempt(self, cause: BaseException, attempt: int) -> list:
        failures = errors.host_failures(cause)
        host_status.record_failures(failures, self.failover_policy.host_recheck)
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
        if self.server is None:  # a connection made by something other than connect()
            return
        role = errors.server_role(self.connection)
        level = logging.INFO if attempts > 1 else logging.DEBUG
        logger.log(
            level,
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
        failures: list,
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

        The error still reaches the caller; nothing is re-run. Outside an
        atomic block the next database use reconnects; inside, Django refuses
        to until the block exits (the server rolled the transaction back).
        """
        if self.connection is None:
            return
        lost = errors.connection_lost(exc, self.connection)
        if not lost and not (
            errors.server_read_only(exc) and self.target_session_attrs in WRITABLE_SESSION_ATTRS
        ):
            return
        server, in_atomic_block = self.server, self.in_atomic_block
        if server is not None:
            host_status.record_lost(server, not lost, self.failover_policy.host_recheck)
        logger.warning(
            "database alias %r: connection to %s %s (%s: %s); %s",
            self.alias,
            server,
            "lost" if lost else "turned read-only",
            type(exc).__name__,
            str(exc).strip().splitlines()[0] if str(exc).strip() else "",
            "the transaction is lost" if in_atomic_block else "the next query reconnects",
        )
        with suppress(errors.Database.Error, DjangoDatabaseError):
            self.close()
        self.server = None
        signals.connection_lost.send(
            sender=self.__class__,
            alias=self.alias,
            host=server.host if server else None,
            port=server.port if server else None,
            error=exc,
            in_atomic_block=in_atomic_block,
        )
