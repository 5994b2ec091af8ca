"""Connections a process inherits through ``fork()``: never used, never closed, in the child.

A child process starts with copies of its parent's sockets, and with them the
sessions of the parent's open connections. Were the child to use one, its
queries and the parent's (or a sibling's) would share one session: answers
go to whichever process reads first, the others wait for answers that never
come. Were it to close one, the driver (``PQfinish``) would send Terminate on
the shared socket, ending the session under the parent. Django does the one
or the other, depending on what the child does first. So, in the child, right
after the fork:

- every connection of the backend's wrappers (of every thread: the child has
  only the forking thread, but the others' wrappers may still be in memory)
  is let go of without a byte on its socket. The child's copy of the socket
  is first replaced by a placeholder (``os.dup2``): what the driver writes
  on closing goes nowhere, and the child no longer holds the server's socket
  open. Then the driver lets go of it
  (:meth:`~.drivers.base.Driver.let_go_inherited`);
- the wrapper forgets it: the next use opens the child's own connection, as
  usual. A transaction open at the fork is the parent's: in the child it is
  lost, as after a lost connection (:mod:`.loss`): inside an atomic block,
  nothing connects until the block exits, and its commit raises;
- the backend's pools are replaced (:func:`.pool.after_fork_in_child`).

This happens at the fork, not on use, so that a query costs nothing more:
a wrapper is noted once, when it is made. It takes Python's fork hooks
(``os.register_at_fork``): ``os.fork()`` runs them (gunicorn, multiprocessing,
Celery's prefork pool); a server that forks in C runs them only when told to
(uWSGI: ``py-call-uwsgi-fork-hooks``).
"""

from __future__ import annotations

import os
import socket
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django_pg_failover.base import DatabaseWrapper
    from django_pg_failover.drivers.base import Driver

#: Every wrapper of the backend in the process (a wrapper is made per thread and alias).
_wrappers: weakref.WeakSet[DatabaseWrapper] = weakref.WeakSet()


def note(wrapper: DatabaseWrapper) -> None:
    """A wrapper was made: its connection is let go of in the children of a fork."""
    _wrappers.add(wrapper)


def let_go(driver: Driver, connection: Any) -> None:
    """Let go of a connection the parent opened, without a byte on its socket."""
    # Asked of the driver, not remembered: the number of a socket since closed
    # may belong to another file now.
    fd = driver.socket_fd(connection)
    if fd is None or fd < 0:  # closed, or found broken: nothing to send on
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as placeholder:
        os.dup2(placeholder.fileno(), fd, inheritable=False)
    driver.let_go_inherited(connection)


def forget(wrapper: DatabaseWrapper) -> None:
    """The wrapper's connection is the parent's: let go of it, and connect anew on next use."""
    connection = wrapper.connection
    if connection is None:
        return
    wrapper.connection = None  # first: whatever happens next, the child never uses it
    let_go(wrapper.driver, connection)
    wrapper.server = None
    wrapper.server_fd = None
    wrapper.loss.transaction_gone(wrapper.in_atomic_block)


def after_fork_in_child() -> None:
    # The child's only thread runs this, before anything else of the child.
    for wrapper in list(_wrappers):
        forget(wrapper)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=after_fork_in_child)
