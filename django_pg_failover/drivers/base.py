"""What the backend needs to know about a driver, and what both drivers share."""

from __future__ import annotations

import abc
import enum
import re
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from django.core.exceptions import ImproperlyConfigured

# SQLSTATEs after which the session is gone: class 08 (connection exception),
# admin_shutdown, crash_shutdown, cannot_connect_now.
_LOST_CLASSES = ("08",)
_LOST_STATES = frozenset({"57P01", "57P02", "57P03"})
READ_ONLY_SQL_TRANSACTION = "25006"
NO_DETAILS = "no error details available"

# libpq's preamble before the reason one host failed, and psycopg 3's before it
# (before 3.2, psycopg 3 wrote "connection failed: " and the reason alone).
_HOST_PREAMBLE = re.compile(
    r"^(?:connection (?:failed|is bad): )?"
    r'(?:connection to server (?:at "[^"]*"(?: \([^)]*\))?, port \d+|on socket "[^"]*") '
    r"failed: )?"
)


#: ``PQTRANS_IDLE``: connected, no transaction open.
TRANSACTION_IDLE_CODE = 0


class TransactionStatus(enum.Enum):
    """libpq's view of the session's transaction (``PQtransactionStatus``)."""

    IDLE = "idle"
    ACTIVE = "active"
    IN_TRANSACTION = "in transaction"
    IN_ERROR = "in error"
    UNKNOWN = "unknown"  # the connection is bad


@dataclass(frozen=True)
class Notice:
    """A message the server sent on an idle connection, as the driver passed it on.

    libpq hands over an error that comes while the connection is idle (a
    server's goodbye) the way it hands over a notice.
    """

    text: str
    #: ``ERROR``, ``FATAL``, ``WARNING``, ``NOTICE``... never translated; None when
    #: the driver passes on the text alone (psycopg2).
    severity: str | None = None
    sqlstate: str | None = None


class Driver(abc.ABC):
    """One PostgreSQL driver as the backend uses it. Instances are stateless."""

    #: The distribution name, as pip knows it.
    name: str
    #: The DB-API module Django uses (``Database`` in Django's backend).
    module: ModuleType
    #: The oldest release this backend supports, and why.
    minimum_version: tuple[int, ...]
    minimum_reason: str
    #: What to ``pip install`` for a newer release ({} is the minimum version).
    upgrade: str
    #: libpq's transaction status of a connection as a number (``PQtransactionStatus``),
    #: read by a C accessor: ``retry_reads`` asks it before every read, and a
    #: Python-level call there would cost every query.
    transaction_status_code: Callable[[Any], int]
    #: The parameter type the driver pastes into the SQL as it is; None if it has none.
    raw_sql_type: type | None = None

    # -- identity ---------------------------------------------------------------------

    @property
    def version(self) -> str:
        return self.module.__version__.split()[0]

    @abc.abstractmethod
    def libpq_version(self) -> int:
        """libpq's version number, e.g. 170006."""

    def label(self) -> str:
        return f"{self.name} {self.version}, libpq {self.libpq_version()}"

    def check_version(self) -> None:
        if _version_tuple(self.version) < self.minimum_version:
            wanted = ".".join(map(str, self.minimum_version))
            raise ImproperlyConfigured(
                f"django_pg_failover needs {self.name} >= {wanted} ({self.minimum_reason}); "
                f"this environment has {self.name} {self.version}: "
                f"pip install --upgrade {self.upgrade.format(wanted)}"
            )

    # -- connecting -------------------------------------------------------------------

    @abc.abstractmethod
    def connect(self, params: Mapping[str, Any]) -> Any:
        """A new connection to the one host ``params`` names."""

    @abc.abstractmethod
    def connect_wait(self, connect_timeout: int) -> float:
        """Seconds a connect really waits on a silent host when told ``connect_timeout``."""

    @abc.abstractmethod
    def is_libpq_keyword(self, key: str) -> bool:
        """Whether libpq knows this connection keyword (libpq's own parser decides)."""

    @abc.abstractmethod
    def parse_conninfo(self, conninfo: str) -> dict[str, str]:
        """A libpq connection string or URI as keywords, parsed by libpq itself.

        No defaults, no environment, no service file: only what the text says.
        Raises ValueError with libpq's message.
        """

    @abc.abstractmethod
    def is_connect_timeout(self, exc: BaseException) -> bool:
        """Whether a failed connect gave up waiting for the host (no answer)."""

    def connect_failure_reason(self, exc: BaseException) -> str:
        """Why a connect to one host failed: libpq's reason, without its preamble."""
        if self.is_connect_timeout(exc):
            return "timeout expired"
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        if not lines:
            # libpq says nothing when it could not even start (no file descriptor
            # left, for one): psycopg 3's words for it, on both drivers.
            return NO_DETAILS
        return _HOST_PREAMBLE.sub("", lines[0])

    # -- an open connection -----------------------------------------------------------

    @abc.abstractmethod
    def landed_on(self, connection: Any) -> tuple[str, int]:
        """The host and port a connection reached."""

    @abc.abstractmethod
    def backend_pid(self, connection: Any) -> int:
        """The server process of the session, as the server said at start-up (no round trip).

        Behind a pooler this is the pooler's number, not a server process's.
        """

    @abc.abstractmethod
    def parameter_status(self, connection: Any, name: str) -> str | None:
        """A setting the server reports to the client (``ParameterStatus``), no round trip."""

    @abc.abstractmethod
    def transaction_status(self, connection: Any) -> TransactionStatus:
        """libpq's view of the transaction; no round trip."""

    @abc.abstractmethod
    def is_closed(self, connection: Any) -> bool:
        """Closed by the code, or found broken by the driver."""

    @abc.abstractmethod
    def socket_fd(self, connection: Any) -> int | None:
        """The connection's socket, None once closed."""

    @abc.abstractmethod
    def consume_input(self, connection: Any) -> list[Notice]:
        """Read what the server sent unasked, without waiting, and take it in.

        Notifications and parameter changes go where the driver keeps them; the
        notices that came are returned. Raises the driver's error when the
        server hung up.
        """

    def goodbye_error(self, notice: Notice) -> Exception:
        """The error for a session the server ended with this message."""
        return self.operational_error(notice.text)

    def close_quietly(self, connection: Any) -> None:
        with suppress(Exception):
            connection.close()

    @abc.abstractmethod
    def let_go_inherited(self, connection: Any) -> None:
        """In a child process: let go of a connection its parent opened, whose socket
        the caller has replaced with a placeholder (:mod:`..inherited`). Nothing may
        reach the server, and nothing may wait for a lock a thread of the parent
        held at the fork."""

    # -- errors -----------------------------------------------------------------------

    @abc.abstractmethod
    def sqlstate(self, exc: BaseException | None) -> str | None:
        """The SQLSTATE the server sent with this error, if any."""

    def connection_lost(self, exc: BaseException, connection: Any) -> bool:
        """True when the error left the session unusable (server gone, link broken)."""
        module = self.module
        if isinstance(exc, (module.OperationalError, module.InterfaceError)) and self.is_closed(
            connection
        ):
            return True
        return self.ends_session(self.sqlstate(exc))

    @staticmethod
    def ends_session(sqlstate: str | None) -> bool:
        """Whether a message with this SQLSTATE says the session is over."""
        if not sqlstate:
            return False
        return sqlstate.startswith(_LOST_CLASSES) or sqlstate in _LOST_STATES

    def server_read_only(self, exc: BaseException) -> bool:
        """True for "cannot execute ... in a read-only transaction" (25006)."""
        return self.sqlstate(exc) == READ_ONLY_SQL_TRANSACTION

    def operational_error(self, message: str) -> Exception:
        """The driver's OperationalError: Django turns it into its own and chains it."""
        return self.module.OperationalError(message)

    # -- queries ------------------------------------------------------------------

    def is_raw_sql(self, value: Any) -> bool:
        """A query parameter the driver pastes into the SQL as it is."""
        return self.raw_sql_type is not None and isinstance(value, self.raw_sql_type)


def _version_tuple(version: str) -> tuple[int, ...]:
    numbers = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if not digits:
            break
        numbers.append(int(digits.group()))
    return tuple(numbers)
