"""Losing a connection: close it, report it, and never hide the transaction that went with it.

The rules (written down in docs/failover.rst, each tested on the lab):

- An error that shows the session gone (server crashed, link broken, the
  server shut down) or its server turned read-only under a read-write session
  (a demotion, or fencing) closes the connection. The error still reaches the
  caller; nothing is re-run here.
- A read-only error on a read-write session whose server reports itself
  writable is settled by asking the server (the session when it can answer, a
  new connection to the same host when its transaction failed): a server that
  is read-only after all was reported stale (a pooler replaying old start-up
  parameters), and its host is asked by query from then on
  (:mod:`..connecting.trust`); one that is writable had the transaction made
  read-only by the code, and the connection stays.
- Outside an atomic block, in autocommit mode, the next database use connects
  anew (to the new primary).
- Inside an atomic block the transaction is lost: no new connection opens
  until the block exits, and the block's commit raises.
- With autocommit off, no new connection opens until the code calls
  ``set_autocommit()`` (or the request ends): the lost transaction's later
  statements must not run one by one in autocommit.

:class:`ConnectionLoss` is the wrapper's component for all of this (as
Django attaches ``client_class`` or ``creation_class``): it owns the loss
flags, and the wrapper's overrides are one-line delegations. A loss is
announced (memory, log line, ``connection_lost``) by :func:`announce`, whoever
found it: the wrapper, or the pool checking a connection it holds.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Protocol

from django.db.utils import OperationalError, ProgrammingError

from django_pg_failover import metrics, signals
from django_pg_failover.connecting.attempt import Landing, attempt
from django_pg_failover.connecting.connector import HOST_KEYWORDS
from django_pg_failover.connecting.memory import HostState, host_status
from django_pg_failover.connecting.roles import WRITABLE, Role, reported_role
from django_pg_failover.connecting.trust import must_ask, pooler_error, verified_role
from django_pg_failover.drivers.base import TransactionStatus

if TYPE_CHECKING:
    from django_pg_failover.drivers import Driver
    from django_pg_failover.settings.conf import FailoverSettings
    from django_pg_failover.settings.hosts import Host
    from django_pg_failover.settings.policy import FailoverPolicy

logger = logging.getLogger("django_pg_failover")

#: What a demoted server's reported role makes of its host's record.
_DEMOTED_TO = {Role.STANDBY: HostState.STANDBY, Role.READ_ONLY_PRIMARY: HostState.READ_ONLY_PRIMARY}


class Wrapper(Protocol):
    """What losing a connection needs of the database wrapper (Django's, and ours)."""

    alias: str
    driver: Driver
    connection: Any
    server: Host | None
    in_atomic_block: bool
    closed_in_transaction: bool
    atomic_blocks: list
    savepoint_ids: list
    autocommit: bool
    commit_on_exit: bool

    @property
    def target_session_attrs(self) -> str: ...

    @property
    def failover_policy(self) -> FailoverPolicy: ...

    @property
    def failover_settings(self) -> FailoverSettings: ...

    def close(self) -> None: ...

    def failover_connection_params(self) -> dict[str, Any]: ...


class ConnectionLoss:
    """The wrapper's connection lost: its flags, and the rules above."""

    def __init__(self, wrapper: Wrapper) -> None:
        self.wrapper = wrapper
        #: The error that lost the last connection (a read may be re-run after it).
        self.error: BaseException | None = None
        #: The connection was lost with autocommit off (outside atomic blocks):
        #: its transaction is gone, and no new connection opens in its place until
        #: the code says how to go on (``set_autocommit()``), or the request ends.
        self.transaction_lost = False
        #: The connection was lost inside the atomic block still open: until it
        #: exits, nothing connects, and a commit of the block raises.
        self.atomic_block_lost = False
        #: A COMMIT is in flight: a loss now leaves its outcome unknown.
        self.committing = False

    # -- an error on the connection -----------------------------------------------------

    def on_driver_error(self, exc: BaseException, stalled: bool = False) -> None:
        """Close a connection that the error shows dead or demoted (``stalled``: the
        stall watchdog gave the call up)."""
        wrapper = self.wrapper
        connection = wrapper.connection
        if connection is None:
            return
        driver = wrapper.driver
        lost = driver.connection_lost(exc, connection)
        demoted_to = None
        if not lost and wrapper.target_session_attrs in WRITABLE and driver.server_read_only(exc):
            demoted_to = self._demoted_to(connection)
        if not lost and demoted_to is None:
            return
        if lost:
            pooler_error(driver, exc, wrapper.server)
        self.report(exc, demoted_to, cause="stalled" if stalled else "crash")
        in_atomic_block = wrapper.in_atomic_block
        if in_atomic_block:
            # Not close(): Django would mark the block "closed in transaction" and
            # let it exit without a word even when the code swallowed the loss
            # inside it. Dropped like this, the next query in the block fails at
            # once and the block's commit raises (see check_commit()).
            self.release()
        else:
            driver.close_quietly(connection)  # a pool must not take it back
            with suppress(driver.module.Error, OperationalError):
                wrapper.close()
        self.transaction_gone(in_atomic_block)
        self.error = exc if lost else None

    def _demoted_to(self, connection: Any) -> HostState | None:
        """After a read-only error: is the server itself read-only now (not just this
        transaction)? Servers 14+ report it as it changes (no round trip); older ones
        report nothing: the error counts as a demotion. A report of a writable server
        is checked by asking it (see the module's rules), and so is any report of a
        host whose reports are not believed (``role_check``, or contradicted once):
        a pooler may replay "standby" for a server promoted since."""
        wrapper = self.wrapper
        server = wrapper.server
        if server is None or not must_ask(server, wrapper.failover_policy.role_check):
            role = reported_role(wrapper.driver, connection)
            if role is None:
                return HostState.READ_ONLY_PRIMARY
            if role.read_only:
                return _DEMOTED_TO[role]
        asked = self._asked_role(connection)
        return None if asked is None else _DEMOTED_TO.get(asked)

    def _asked_role(self, connection: Any) -> Role | None:
        """The server's role asked, on this session if it can answer, else on a new
        connection to the same host; None if neither answered."""
        wrapper = self.wrapper
        driver, server = wrapper.driver, wrapper.server
        if server is None:
            return None
        if driver.transaction_status(connection) is TransactionStatus.IDLE:
            try:
                return verified_role(driver, connection, server)
            except Exception:  # the session went away meanwhile: nothing learned
                return None
        # A failed transaction answers nothing but ROLLBACK, which is the code's to send.
        params = {
            key: value
            for key, value in wrapper.failover_connection_params().items()
            if key not in HOST_KEYWORDS
        }
        outcome = attempt(
            driver,
            server,
            params,
            wrapper.failover_policy.host_recheck,
            wrapper.failover_settings.password,
            ask=True,
        )
        if not isinstance(outcome, Landing):
            return None
        driver.close_quietly(outcome.connection)
        return outcome.role

    def transaction_gone(self, in_atomic_block: bool) -> None:
        """The connection is gone (the wrapper holds none now), and its transaction with it."""
        if in_atomic_block:
            self.atomic_block_lost = True
            if not self.wrapper.commit_on_exit:  # the block is part of a manual transaction
                self.transaction_lost = True
        elif not self.wrapper.autocommit:
            self.transaction_lost = True

    def release(self) -> None:
        """Close the connection and let go of it (a pool gets its slot back)."""
        wrapper = self.wrapper
        connection = wrapper.connection
        wrapper.driver.close_quietly(connection)
        pool = getattr(connection, "_pool", None)
        if pool is not None:
            with suppress(Exception):
                pool.putconn(connection)  # closed: the pool discards and replaces it
        wrapper.connection = None

    def report(
        self, exc: BaseException, demoted_to: HostState | None = None, cause: str = "crash"
    ) -> None:
        """Log, signal and remember a lost (or demoted) connection (``cause``: see
        :func:`announce`)."""
        wrapper = self.wrapper
        in_atomic_block = wrapper.in_atomic_block
        if self.committing:
            # The server may have committed before the session went, and a
            # synchronous standby may have the commit too: nobody can tell.
            consequence = (
                "the COMMIT's outcome is unknown (the transaction may have been committed)"
            )
        elif in_atomic_block or not wrapper.autocommit:
            consequence = "the transaction is lost"
        else:
            consequence = "the next query reconnects"
        server, wrapper.server = wrapper.server, None
        announce(
            sender=type(wrapper),
            alias=wrapper.alias,
            server=server,
            error=exc,
            what="turned read-only" if demoted_to else "lost",
            consequence=consequence,
            recheck=wrapper.failover_policy.host_recheck,
            demoted_to=demoted_to,
            pool=getattr(wrapper, "pool", None),  # Django 5.1+
            in_atomic_block=in_atomic_block,
            during_commit=self.committing,
            cause=cause,
        )

    # -- what the wrapper may do next ---------------------------------------------------

    @property
    def pending(self) -> bool:
        """A lost transaction still stands in the way (see :meth:`check_can_connect`)."""
        return self.transaction_lost or self.atomic_block_lost

    def check_can_connect(self) -> None:
        """Before opening a connection: refuse where the lost transaction is still open."""
        wrapper = self.wrapper
        self.settle_manual_transaction()
        if wrapper.in_atomic_block:
            if wrapper.closed_in_transaction or self.atomic_block_lost:
                # Django 5.1+ says the same; 4.2 would silently reconnect.
                raise ProgrammingError("Cannot open a new connection in an atomic block.")
            return
        self.atomic_block_lost = False  # that block has exited
        if self.transaction_lost:
            raise ProgrammingError(
                f"database alias {wrapper.alias!r}: the connection was lost while autocommit "
                "was off, and the transaction with it. Call set_autocommit() to choose the "
                "mode of the next connection."
            )

    def check_commit(self) -> None:
        """Django's commit() does nothing without a connection: it would report a
        transaction the server rolled back as committed."""
        alias = self.wrapper.alias
        if self.transaction_lost:
            raise OperationalError(
                f"database alias {alias!r}: the connection was lost while autocommit was "
                "off; nothing since the last commit was committed. Call set_autocommit() to "
                "choose the mode of the next connection."
            )
        if self.atomic_block_lost:
            raise OperationalError(
                f"database alias {alias!r}: the connection was lost inside this atomic "
                "block (the error was raised there); nothing of the block was committed"
            )

    def settle_manual_transaction(self) -> None:
        """Leave the state Django keeps after an atomic block, opened with autocommit
        off, lost its connection: the block has exited (no atomic block is open) but
        ``in_atomic_block`` stays set, and no connection could ever open again. What
        is left is the manual transaction, and it is lost.
        """
        wrapper = self.wrapper
        if wrapper.in_atomic_block and wrapper.closed_in_transaction and not wrapper.atomic_blocks:
            wrapper.in_atomic_block = False
            wrapper.closed_in_transaction = False
            wrapper.savepoint_ids = []
            self.transaction_lost = True

    def request_boundary(self) -> None:
        """The connection closes, or a request ends: a transaction lost in it was its
        business; the next one starts clean."""
        if self.wrapper.in_atomic_block:
            self.settle_manual_transaction()
        self.transaction_lost = False


def announce(
    *,
    sender: type,
    alias: str,
    server: Host | None,
    error: BaseException,
    what: str,
    consequence: str,
    recheck: float,
    demoted_to: HostState | None = None,
    pool: Any = None,
    in_atomic_block: bool = False,
    during_commit: bool = False,
    cause: str = "crash",
) -> None:
    """A connection to ``server`` was lost (or turned read-only): the memory, the
    other idle connections of a pool, the log, ``connection_lost`` and the metrics
    hear of it. ``cause`` (for the metrics): ``crash`` (the session went during a
    call), ``stalled`` (the stall watchdog gave the call up), ``closed_while_idle``
    (found closed before use); ``demoted`` whenever ``demoted_to`` is given."""
    if server is not None:
        host_status.record(server, demoted_to or HostState.DOWN, recheck)
        if pool is not None and hasattr(pool, "drain"):
            # The other idle connections to that server are gone or read-only
            # too: replace them now rather than fail one request each.
            pool.drain()
    first_line = next(iter(str(error).strip().splitlines()), "")
    logger.warning(
        "database alias %r: connection to %s %s (%s: %s); %s",
        alias,
        server,
        what,
        type(error).__name__,
        first_line,
        consequence,
    )
    signals.connection_lost.send(
        sender=sender,
        alias=alias,
        host=server.host if server else None,
        port=server.port if server else None,
        error=error,
        in_atomic_block=in_atomic_block,
        during_commit=during_commit,
    )
    metrics.connection_lost(alias, server, "demoted" if demoted_to else cause)
