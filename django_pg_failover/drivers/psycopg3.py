"""psycopg 3 (the ``psycopg`` distribution)."""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import conninfo, pq

from .base import Driver, Notice, TransactionStatus

_TRANSACTION_STATUS = {
    pq.TransactionStatus.IDLE: TransactionStatus.IDLE,
    pq.TransactionStatus.ACTIVE: TransactionStatus.ACTIVE,
    pq.TransactionStatus.INTRANS: TransactionStatus.IN_TRANSACTION,
    pq.TransactionStatus.INERROR: TransactionStatus.IN_ERROR,
}


class Psycopg3Driver(Driver):
    name = "psycopg"
    module = psycopg
    # 3.1.17 connects to every address of a host name that resolves to several
    # (localhost: ::1 and 127.0.0.1); before it, only the first was tried.
    minimum_version = (3, 1, 17)
    minimum_reason = "it tries every address of a host name"
    upgrade = "'psycopg[binary]>={}'"
    # A property of the C PGconn (psycopg[binary] and psycopg[c]): no Python-level call.
    transaction_status_code = operator.attrgetter("pgconn.transaction_status")
    # psycopg 3 has no parameter type it pastes into the SQL: sql.SQL and
    # friends are refused as parameters ("cannot adapt type 'SQL'").
    raw_sql_type = None

    def libpq_version(self) -> int:
        return pq.version()

    def connect(self, params: Mapping[str, Any]) -> Any:
        return psycopg.Connection.connect(**params)

    def connect_wait(self, connect_timeout: int) -> float:
        # psycopg 3 enforces connect_timeout itself, at least 2 seconds whatever libpq.
        return max(connect_timeout, 2)

    def is_libpq_keyword(self, key: str) -> bool:
        return _is_libpq_keyword(key)

    def parse_conninfo(self, text: str) -> dict[str, str]:
        try:
            return {key: str(value) for key, value in conninfo.conninfo_to_dict(text).items()}
        except psycopg.ProgrammingError as exc:
            raise ValueError(str(exc).strip()) from None

    def is_connect_timeout(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.errors.ConnectionTimeout)

    # From the PGconn, not ``connection.info`` (a new object per access, and the
    # connection's encoding looked up per value): read on every connect. Host
    # names, ports and the settings asked for here are ASCII.
    def landed_on(self, connection: Any) -> tuple[str, int]:
        pgconn = connection.pgconn
        return pgconn.host.decode(), int(pgconn.port)

    def backend_pid(self, connection: Any) -> int:
        return connection.pgconn.backend_pid

    def parameter_status(self, connection: Any, name: str) -> str | None:
        value = connection.pgconn.parameter_status(name.encode())
        return None if value is None else value.decode()

    def transaction_status(self, connection: Any) -> TransactionStatus:
        status = connection.info.transaction_status
        return _TRANSACTION_STATUS.get(status, TransactionStatus.UNKNOWN)

    def is_closed(self, connection: Any) -> bool:
        return connection.closed or connection.broken

    def socket_fd(self, connection: Any) -> int | None:
        if connection.closed:
            return None
        try:
            return connection.pgconn.socket
        except psycopg.OperationalError:
            return None

    def let_go_inherited(self, connection: Any) -> None:
        # PQfinish takes no lock of psycopg's (nor does it return a pooled
        # connection, as close() may): libpq's memory and the placeholder are freed
        # at once, and its Terminate goes to the placeholder.
        connection.pgconn.finish()

    def consume_input(self, connection: Any) -> list[Notice]:
        pgconn = connection.pgconn
        notices: list[Notice] = []

        def note(diag: psycopg.errors.Diagnostic) -> None:
            # Read now: the message behind diag is freed when the handler returns.
            text, severity = diag.message_primary or "", diag.severity_nonlocalized
            notices.append(Notice(text, severity, diag.sqlstate))

        connection.add_notice_handler(note)
        try:
            pgconn.consume_input()  # raises OperationalError when the server hung up
            # consume_input() only reads; parsing what it read hands the notices to
            # the handlers and queues the notifications, which go where psycopg
            # puts them after any read of its own.
            while notify := pgconn.notifies():
                if pgconn.notify_handler:
                    pgconn.notify_handler(notify)
        finally:
            connection.remove_notice_handler(note)
        if pgconn.status == pq.ConnStatus.BAD:
            raise psycopg.OperationalError("the server closed the connection")
        return notices

    def goodbye_error(self, notice: Notice) -> Exception:
        # The class psycopg raises for that SQLSTATE (AdminShutdown for 57P01...).
        try:
            error_class = psycopg.errors.lookup(notice.sqlstate or "")
        except KeyError:
            error_class = psycopg.OperationalError
        return error_class(notice.text)

    def sqlstate(self, exc: BaseException | None) -> str | None:
        return getattr(exc, "sqlstate", None)


@functools.lru_cache(maxsize=256)
def _is_libpq_keyword(key: str) -> bool:
    try:
        conninfo.conninfo_to_dict(conninfo.make_conninfo(**{key: "x"}))
    except psycopg.ProgrammingError:
        return False
    return True
