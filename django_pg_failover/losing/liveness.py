"""Is an idle connection still alive? Asked of its socket, without a round trip.

A connection that sat idle (between requests, in a pool) may have been closed
by its server: crashed, restarted, switched over, or a session terminated
with ``pg_terminate_backend()``. Its next statement would fail. Before that
statement is sent, the socket is polled without waiting: nothing to read
means nothing happened, and the check ends there (no read, no round trip).

Something to read on an idle connection is one of:

- a notification, a parameter change or a notice: the session goes on, and
  the driver keeps them where the application finds them;
- the server's goodbye, then the end of the stream: an error (libpq hands an
  error that comes while the connection is idle over as a notice, of
  severity ERROR, FATAL or PANIC), or a message whose SQLSTATE ends the
  session (a server shut down immediately says goodbye with a WARNING,
  57P01 or 57P02); the connection is gone even before its end arrives;
- the end of the stream alone (a server killed with its sessions).

A goodbye and the end of the stream behind it take two reads: a read that
returned data does not look further (libpq's way), even when the end is
already there. So the socket is read for as long as it has something (a few
reads at most). psycopg 3 passes on a notice's severity untranslated: a
goodbye is known as soon as it is read. psycopg2 passes on the text alone,
its severity in the server's language: after a notice the check waits up to
``_GOODBYE_WAIT_MS`` for the end of the stream, which follows a goodbye within
milliseconds (2 to 7 ms in the lab). A notice on an idle connection is rare
otherwise (server debug output a session asked for), and only then is the
wait spent in full. go-sql-driver/mysql checks pooled connections the same way.
"""

from __future__ import annotations

import select
from typing import Any

from django_pg_failover.drivers import Driver, Notice

_READABLE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP
#: Severities of an error, which libpq hands over as a notice on an idle connection.
_ERROR_SEVERITIES = frozenset({"ERROR", "FATAL", "PANIC"})
#: Reads in one check at most: a goodbye and the end of the stream take two.
_MAX_READS = 4
#: How long the check waits for the end of the stream after a notice whose
#: severity the driver does not tell (psycopg2), in milliseconds.
_GOODBYE_WAIT_MS = 100


def idle_connection_failure(driver: Driver, connection: Any) -> BaseException | None:
    """None when the connection looks alive; else the error that shows it is not."""
    if driver.is_closed(connection):
        return driver.operational_error("the connection is closed")
    fd = driver.socket_fd(connection)
    if fd is None:
        return driver.operational_error("the connection is closed")
    poller = select.poll()
    poller.register(fd, _READABLE)
    if not poller.poll(0):
        return None
    for _ in range(_MAX_READS):
        try:
            notices = driver.consume_input(connection)
        except driver.module.Error as exc:
            return exc
        if driver.is_closed(connection):
            return driver.operational_error("the server closed the connection")
        goodbye = next((n for n in notices if _says_goodbye(driver, n)), None)
        if goodbye is not None:
            return driver.goodbye_error(goodbye)
        unsure = any(notice.severity is None for notice in notices)
        if not poller.poll(_GOODBYE_WAIT_MS if unsure else 0):
            return None
    return None  # still more to read: notifications, which the next check takes in


def _says_goodbye(driver: Driver, notice: Notice) -> bool:
    return notice.severity in _ERROR_SEVERITIES or driver.ends_session(notice.sqlstate)
