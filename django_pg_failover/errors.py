"""What a driver error means for failover: the one place that knows psycopg2.

psycopg 3 support adds its twin of these functions here; nothing else in the
package looks at driver exception types or SQLSTATEs.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions

Database = psycopg2

# SQLSTATEs after which the session is gone: class 08 (connection exception),
# admin_shutdown, crash_shutdown, cannot_connect_now.
_LOST_CLASSES = ("08",)
_LOST_STATES = frozenset({"57P01", "57P02", "57P03"})
READ_ONLY_SQL_TRANSACTION = "25006"

# Connect failures that waiting will not heal. libpq gives no SQLSTATE for
# errors during connection start-up, only the server's message (the lab and
# most servers use English messages; see the docs on lc_messages).
_PERMANENT_STATES = ("28", "3D000")
_PERMANENT_MESSAGES = re.compile(
    r"password authentication failed"
    r"|authentication failed for user"
    r"|no pg_hba\.conf entry"
    r"|role \".*\" does not exist"
    r"|database \".*\" does not exist"
    r"|no password supplied"
    r"|invalid \w+ value"
    r"|invalid connection option"
    r"|certificate verify failed"
    r"|server does not support SSL"
)

_HOST_LINE = re.compile(
    r'^connection to server (?:at "(?P<host>[^"]*)"(?: \([^)]*\))?, port (?P<port>\d+)'
    r'|on socket "(?P<socket>[^"]*)") failed: (?P<reason>.*)$'
)
_UNRESOLVED = re.compile(
    r'^could not translate host name "(?P<host>[^"]*)" to address: (?P<reason>.*)$'
)
_SOCKET_FILE = re.compile(r"^(?P<folder>.*)/\.s\.PGSQL\.(?P<port>\d+)$")


@functools.lru_cache(maxsize=256)
def is_libpq_keyword(key: str) -> bool:
    """Whether libpq knows this connection keyword (asks libpq's own parser)."""
    try:
        psycopg2.extensions.parse_dsn(psycopg2.extensions.make_dsn(**{key: "x"}))
    except psycopg2.ProgrammingError:
        return False
    return True


def libpq_version() -> int:
    return psycopg2.extensions.libpq_version()


def connect_wait(connect_timeout: int) -> int:
    """Seconds libpq really waits on a silent host: before libpq 17, at least 2."""
    return connect_timeout if libpq_version() >= 170000 else max(connect_timeout, 2)


def driver_label() -> str:
    return f"psycopg2 {psycopg2.__version__.split()[0]}, libpq {libpq_version()}"


def sqlstate(exc: BaseException | None) -> str | None:
    return getattr(exc, "pgcode", None)


def connection_lost(exc: BaseException, connection: Any) -> bool:
    """True when the error left the session unusable (server gone, link broken)."""
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)) and getattr(
        connection, "closed", 0
    ):
        return True
    code = sqlstate(exc)
    return bool(code) and (code.startswith(_LOST_CLASSES) or code in _LOST_STATES)


def server_read_only(exc: BaseException) -> bool:
    """True for "cannot execute ... in a read-only transaction" (25006)."""
    return sqlstate(exc) == READ_ONLY_SQL_TRANSACTION


def server_demoted(connection: Any) -> bool:
    """After a read-only error: is the server itself read-only now (not just this transaction)?

    Servers 14+ report both settings to the client as they change, so this costs
    no round trip. Older servers report neither: count the error as a demotion.
    """
    info = connection.info
    hot_standby = info.parameter_status("in_hot_standby")
    read_only = info.parameter_status("default_transaction_read_only")
    if hot_standby is None and read_only is None:
        return True
    return hot_standby == "on" or read_only == "on"


def connect_error_is_permanent(exc: BaseException) -> bool:
    """True when connecting failed for a reason that retrying will not heal."""
    code = sqlstate(exc)
    if code and code.startswith(_PERMANENT_STATES):
        return True
    if not isinstance(exc, psycopg2.OperationalError):
        return True  # ProgrammingError (bad DSN) and the like
    return bool(_PERMANENT_MESSAGES.search(str(exc)))


@dataclass(frozen=True)
class HostFailure:
    """One line of libpq's multi-host error: which server failed, and why."""

    host: str
    port: int | None
    reason: str

    @property
    def address(self) -> str:
        if self.port is None:
            return self.host
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def host_failures(exc: BaseException) -> list[HostFailure]:
    """Split libpq's connect error into one failure per host, as libpq lists them."""
    failures: list[HostFailure] = []
    for line in str(exc).splitlines():
        unresolved = _UNRESOLVED.match(line)
        if unresolved:
            reason = f"could not resolve: {unresolved.group('reason').strip()}"
            failures.append(HostFailure(unresolved.group("host"), None, reason))
            continue
        match = _HOST_LINE.match(line)
        if not match:
            continue
        reason = re.sub(r"^FATAL:\s+", "", match.group("reason").strip())
        if match.group("socket"):
            socket = _SOCKET_FILE.match(match.group("socket"))
            if socket:
                failures.append(
                    HostFailure(socket.group("folder"), int(socket.group("port")), reason)
                )
            else:
                failures.append(HostFailure(match.group("socket"), None, reason))
        else:
            failures.append(HostFailure(match.group("host"), int(match.group("port")), reason))
    return failures


def landed_on(connection: Any) -> tuple[str, int]:
    """The host and port a new connection reached."""
    return connection.info.host, int(connection.info.port)


def server_role(connection: Any) -> str | None:
    """'primary' or 'standby' from what the server reported at start-up (PG 14+)."""
    hot_standby = connection.info.parameter_status("in_hot_standby")
    if hot_standby is None:
        return None
    return "standby" if hot_standby == "on" else "primary"


def transaction_idle(connection: Any) -> bool:
    """No transaction open on the server (libpq's own view: no round trip)."""
    return connection.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE


def is_raw_sql(value: Any) -> bool:
    """A query parameter the driver pastes into the SQL as it is."""
    return isinstance(value, psycopg2.extensions.AsIs)
