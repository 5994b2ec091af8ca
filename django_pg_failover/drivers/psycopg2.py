"""psycopg2: libpq walks nothing here (the backend connects one host at a time)."""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping
from typing import Any

import psycopg2
import psycopg2.extensions

from .base import Driver, Notice, TransactionStatus

_TRANSACTION_STATUS = {
    psycopg2.extensions.TRANSACTION_STATUS_IDLE: TransactionStatus.IDLE,
    psycopg2.extensions.TRANSACTION_STATUS_ACTIVE: TransactionStatus.ACTIVE,
    psycopg2.extensions.TRANSACTION_STATUS_INTRANS: TransactionStatus.IN_TRANSACTION,
    psycopg2.extensions.TRANSACTION_STATUS_INERROR: TransactionStatus.IN_ERROR,
}


#: How many notices psycopg2 keeps in connection.notices (its CONN_NOTICES_LIMIT).
_NOTICES_KEPT = 50


class Psycopg2Driver(Driver):
    name = "psycopg2"
    module = psycopg2
    # The oldest Django 6 accepts; its wheels bundle libpq 16.
    minimum_version = (2, 9, 9)
    minimum_reason = "the oldest release Django 6 supports"
    upgrade = "'psycopg2-binary>={}' (or psycopg2, built against your libpq)"
    transaction_status_code = operator.methodcaller("get_transaction_status")
    raw_sql_type = psycopg2.extensions.AsIs

    def libpq_version(self) -> int:
        return psycopg2.extensions.libpq_version()

    def connect(self, params: Mapping[str, Any]) -> Any:
        return psycopg2.connect(**params)

    def connect_wait(self, connect_timeout: int) -> float:
        # libpq before 17 rounds a timeout of 1 up to 2 seconds.
        return connect_timeout if self.libpq_version() >= 170000 else max(connect_timeout, 2)

    def is_libpq_keyword(self, key: str) -> bool:
        return _is_libpq_keyword(key)

    def parse_conninfo(self, conninfo: str) -> dict[str, str]:
        try:
            return psycopg2.extensions.parse_dsn(conninfo)
        except psycopg2.ProgrammingError as exc:
            raise ValueError(str(exc).strip().removeprefix("invalid dsn: ")) from None

    def is_connect_timeout(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg2.OperationalError) and str(exc).rstrip().endswith(
            "timeout expired"
        )

    def landed_on(self, connection: Any) -> tuple[str, int]:
        return connection.info.host, int(connection.info.port)

    def backend_pid(self, connection: Any) -> int:
        return connection.get_backend_pid()

    def parameter_status(self, connection: Any, name: str) -> str | None:
        return connection.info.parameter_status(name)

    def transaction_status(self, connection: Any) -> TransactionStatus:
        status = connection.get_transaction_status()
        return _TRANSACTION_STATUS.get(status, TransactionStatus.UNKNOWN)

    def is_closed(self, connection: Any) -> bool:
        return bool(connection.closed)

    def socket_fd(self, connection: Any) -> int | None:
        if connection.closed:
            return None
        return connection.fileno()

    def let_go_inherited(self, connection: Any) -> None:
        # Nothing: connection_dealloc skips PQfinish in a process other than the
        # one that opened the connection (it compares the pid), and only the
        # placeholder stays open. Not close(): it takes the connection's lock,
        # which a thread of the parent may have held at the fork.
        pass

    def consume_input(self, connection: Any) -> list[Notice]:
        # On a synchronous connection poll() reads pending messages (PQconsumeInput),
        # moves notifications to connection.notifies and notices to
        # connection.notices, and raises OperationalError when the server has
        # closed the socket. The notices are caught on their way (psycopg2 lets
        # any object with append() take them), then handed on as usual.
        kept, connection.notices = connection.notices, []
        try:
            connection.poll()
        finally:
            arrived, connection.notices = connection.notices, kept
            for text in arrived:
                kept.append(text)
            if isinstance(kept, list):
                del kept[:-_NOTICES_KEPT]
        # Text alone: "FATAL:  terminating connection...", severity translated.
        return [Notice(text.strip()) for text in arrived]

    def sqlstate(self, exc: BaseException | None) -> str | None:
        return getattr(exc, "pgcode", None)


@functools.lru_cache(maxsize=256)
def _is_libpq_keyword(key: str) -> bool:
    try:
        psycopg2.extensions.parse_dsn(psycopg2.extensions.make_dsn(**{key: "x"}))
    except psycopg2.ProgrammingError:
        return False
    return True
