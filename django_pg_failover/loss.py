"""Losing a connection: close it, report it, and never hide the transaction that went with it.

The rules (written down in docs/failover.rst, each tested on the lab):

- An error that shows the session gone (server crashed, link broken, the
  server shut down) or its server turned read-only under a read-write session
  (a demotion, or fencing) closes the connection. The error still reaches the
  caller; nothing is re-run here.
- Outside an atomic block, in autocommit mode, the next database use connects
  anew (to the new primary).
- Inside an atomic block the transaction is lost: no new connection opens
  until the block exits, and the block's commit raises.
- With autocommit off, no new connection opens until the code calls
  ``set_autocommit()`` (or the request ends): the lost transaction's later
  statements must not run one by one in autocommit.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from django.db.utils import OperationalError, ProgrammingError

from . import signals
from .status import HostState, host_status
from .targets import WRITABLE

if TYPE_CHECKING:
    from .base import DatabaseWrapper

logger = logging.getLogger("django_pg_failover")


def server_demoted(wrapper: DatabaseWrapper, connection: Any) -> HostState | None:
    """After a read-only error: is the server itself read-only now (not just this transaction)?

    Servers 14+ report both settings to the client as they change, so this costs
    no round trip. Older servers report neither: count the error as a demotion.
    """
    driver = wrapper.driver
    hot_standby = driver.parameter_status(connection, "in_hot_standby")
    read_only = driver.parameter_status(connection, "default_transaction_read_only")
    if hot_standby is None and read_only is None:
        return HostState.READ_ONLY_PRIMARY
    if hot_standby == "on":
        return HostState.STANDBY
    if read_only == "on":
        return HostState.READ_ONLY_PRIMARY
    return None


def on_driver_error(wrapper: DatabaseWrapper, exc: BaseException) -> None:
    """Close a connection that the error shows dead or demoted."""
    connection = wrapper.connection
    if connection is None:
        return
    driver = wrapper.driver
    lost = driver.connection_lost(exc, connection)
    demoted_to = None
    if not lost and wrapper.target_session_attrs in WRITABLE and driver.server_read_only(exc):
        demoted_to = server_demoted(wrapper, connection)
    if not lost and demoted_to is None:
        return
    report_lost(wrapper, exc, demoted_to)
    in_atomic_block = wrapper.in_atomic_block
    if in_atomic_block:
        # Not close(): Django would mark the block "closed in transaction" and
        # let it exit without a word even when the code swallowed the loss
        # inside it. Dropped like this, the next query in the block fails at
        # once and the block's commit raises (see check_commit()).
        release(wrapper)
    else:
        driver.close_quietly(connection)  # a pool must not take it back
        with suppress(driver.module.Error, OperationalError):
            wrapper.close()
    transaction_gone(wrapper, in_atomic_block)
    wrapper.lost_error = exc if lost else None


def transaction_gone(wrapper: DatabaseWrapper, in_atomic_block: bool) -> None:
    """The connection is gone (the wrapper holds none now), and its transaction with it."""
    if in_atomic_block:
        wrapper.atomic_block_lost = True
        if not wrapper.commit_on_exit:  # the block is part of a manual transaction
            wrapper.transaction_lost = True
    elif not wrapper.autocommit:
        wrapper.transaction_lost = True


def release(wrapper: DatabaseWrapper) -> None:
    """Close the connection and let go of it (a pool gets its slot back)."""
    connection = wrapper.connection
    wrapper.driver.close_quietly(connection)
    pool = getattr(connection, "_pool", None)
    if pool is not None:
        with suppress(Exception):
            pool.putconn(connection)  # closed: the pool discards and replaces it
    wrapper.connection = None


def report_lost(
    wrapper: DatabaseWrapper, exc: BaseException, demoted_to: HostState | None = None
) -> None:
    """Log, signal and remember a lost (or demoted) connection."""
    server, in_atomic_block = wrapper.server, wrapper.in_atomic_block
    recheck = wrapper.failover_policy.host_recheck
    if server is not None:
        host_status.record(server, demoted_to or HostState.DOWN, recheck)
        pool = getattr(wrapper, "pool", None)  # Django 5.1+
        if pool is not None and hasattr(pool, "drain"):
            # The other idle connections to that server are gone or read-only
            # too: replace them now rather than fail one request each.
            pool.drain()
    during_commit = wrapper.committing
    if during_commit:
        # The server may have committed before the session went, and a
        # synchronous standby may have the commit too: nobody can tell.
        consequence = "the COMMIT's outcome is unknown (the transaction may have been committed)"
    elif in_atomic_block or not wrapper.autocommit:
        consequence = "the transaction is lost"
    else:
        consequence = "the next query reconnects"
    first_line = next(iter(str(exc).strip().splitlines()), "")
    logger.warning(
        "database alias %r: connection to %s %s (%s: %s); %s",
        wrapper.alias,
        server,
        "turned read-only" if demoted_to else "lost",
        type(exc).__name__,
        first_line,
        consequence,
    )
    wrapper.server = None
    signals.connection_lost.send(
        sender=wrapper.__class__,
        alias=wrapper.alias,
        host=server.host if server else None,
        port=server.port if server else None,
        error=exc,
        in_atomic_block=in_atomic_block,
        during_commit=during_commit,
    )


def check_can_connect(wrapper: DatabaseWrapper) -> None:
    """Before opening a connection: refuse where the lost transaction is still open."""
    settle_lost_manual_transaction(wrapper)
    if wrapper.in_atomic_block:
        if wrapper.closed_in_transaction or wrapper.atomic_block_lost:
            # Django 5.1+ says the same; 4.2 would silently reconnect.
            raise ProgrammingError("Cannot open a new connection in an atomic block.")
        return
    wrapper.atomic_block_lost = False  # that block has exited
    if wrapper.transaction_lost:
        raise ProgrammingError(
            f"database alias {wrapper.alias!r}: the connection was lost while autocommit "
            "was off, and the transaction with it. Call set_autocommit() to choose the "
            "mode of the next connection."
        )


def check_commit(wrapper: DatabaseWrapper) -> None:
    """Django's commit() does nothing without a connection: it would report a
    transaction the server rolled back as committed."""
    if wrapper.transaction_lost:
        raise OperationalError(
            f"database alias {wrapper.alias!r}: the connection was lost while autocommit was "
            "off; nothing since the last commit was committed. Call set_autocommit() to "
            "choose the mode of the next connection."
        )
    if wrapper.atomic_block_lost:
        raise OperationalError(
            f"database alias {wrapper.alias!r}: the connection was lost inside this atomic "
            "block (the error was raised there); nothing of the block was committed"
        )


def settle_lost_manual_transaction(wrapper: DatabaseWrapper) -> None:
    """Leave the state Django keeps after an atomic block, opened with autocommit
    off, lost its connection: the block has exited (no atomic block is open) but
    ``in_atomic_block`` stays set, and no connection could ever open again. What
    is left is the manual transaction, and it is lost.
    """
    if wrapper.in_atomic_block and wrapper.closed_in_transaction and not wrapper.atomic_blocks:
        wrapper.in_atomic_block = False
        wrapper.closed_in_transaction = False
        wrapper.savepoint_ids = []
        wrapper.transaction_lost = True
