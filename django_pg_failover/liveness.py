"""Is an idle connection still alive? Asked of its socket, without a round trip.

A connection that sat idle (between requests, in a pool) may have been closed
by its server: crashed, restarted, switched over, or a session terminated
with ``pg_terminate_backend()``. Its next statement would fail. Before that
statement is sent, the socket is polled without waiting: nothing to read
means nothing happened; something to read on an idle connection is the
server's goodbye (an error such as 57P01 and the end of the stream), or a
notice or notification the driver then takes in without losing the session.
go-sql-driver/mysql checks pooled connections the same way.
"""

from __future__ import annotations

import select
from typing import Any

from .drivers import Driver

_READABLE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP


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
    try:
        driver.consume_input(connection)
    except driver.module.Error as exc:
        return exc
    if driver.is_closed(connection):
        return driver.operational_error("the server closed the connection")
    return None
