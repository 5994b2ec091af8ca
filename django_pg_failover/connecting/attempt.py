"""One connect attempt: one host, its role, and what the outcome says about the host.

The backend does not hand libpq the whole host list. libpq stops at the first
server that refuses the connection (a ``pg_hba.conf`` line, a wrong password)
even when the next host could serve, and reports each host's failure only
when all fail. One host at a time gives an exact verdict per host
(:mod:`.verdicts`) and the server's role (:mod:`.roles`).

An attempt records what it learned in the host memory (:mod:`.memory`): a
host that did not answer, a role. A refusal of the alias's credentials says
nothing of the server and is not recorded. Anything an attempt raises is that
host's failure, never the caller's: an exception other than the driver's
(psycopg 3 raises ``UnicodeError`` for a name DNS cannot hold) counts as no
answer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django_pg_failover.background import fork_gate
from django_pg_failover.connecting import password as with_password
from django_pg_failover.connecting.memory import host_status
from django_pg_failover.connecting.roles import Role, asked_role, reported_role
from django_pg_failover.connecting.verdicts import (
    Verdict,
    connect_verdict,
    server_message,
    unexpected_failure,
)
from django_pg_failover.drivers import Driver
from django_pg_failover.settings.hosts import Host
from django_pg_failover.settings.password import PasswordProvider, PasswordProviderError


@dataclass(frozen=True)
class HostFailure:
    """Why one host could not be used in a connect attempt."""

    host: Host
    reason: str
    #: None: the server answered, with a role that does not suit.
    verdict: Verdict | None
    error: BaseException | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Kept (the error a caller finally gets is chained to it), but not the
        # frames it was raised through: a timed-out attempt's frames hold
        # psycopg's connect generator and, with it, the attempt's open socket,
        # for as long as the failure is remembered.
        _drop_tracebacks(self.error)

    @property
    def final(self) -> bool:
        return self.verdict is not None and self.verdict.final

    #: (A failure never suits; see :attr:`Landing.suits`.)
    suits = False


@dataclass
class Landing:
    """A connection, the server it reached, and what it took."""

    connection: Any
    host: Host
    role: Role | None
    passes: int = 1
    elapsed: float = 0.0
    #: When the attempt that opened it began and ended (monotonic): the server's
    #: session started in between (the stall watchdog knows it again by that).
    began: float = 0.0
    ended: float = 0.0
    #: The session's server process (as the server said) and the connection's
    #: socket, read once (a pool's connection is checked out many times).
    pid: int = 0
    fd: int | None = None
    #: Judged suitable by the calling thread's own attempt (the healthy path).
    suits: bool = False


#: What an attempt ends with.
Outcome = Landing | HostFailure


def attempt(
    driver: Driver,
    host: Host,
    params: Mapping[str, Any],
    recheck: float,
    password: PasswordProvider | None = None,
) -> Outcome:
    """Connect to one host and learn its role; record what that says about it.

    ``params`` are the alias's connection parameters without any host (the
    caller strips them); ``recheck`` is how long the memory keeps a record;
    ``password``: the alias's password provider (:mod:`.password`), if any.
    """
    began = time.monotonic()
    try:
        with fork_gate.inside():
            if password is None:  # the usual case: no call added to the connect
                connection = driver.connect({**params, "host": host.host, "port": host.port})
            else:
                connection = with_password.connect(
                    driver, {**params, "host": host.host, "port": host.port}, password
                )
    except PasswordProviderError as exc:
        # Says nothing of the server (not recorded); waiting would not fix the provider.
        return HostFailure(host, exc.reason, Verdict.REFUSED, exc)
    except driver.module.Error as exc:
        reason = driver.connect_failure_reason(exc)
        verdict = connect_verdict(reason, driver.is_connect_timeout(exc))
        if not verdict.final:  # a refusal of our credentials says nothing of the server
            host_status.record_down(host, recheck)
        return HostFailure(host, server_message(reason), verdict, exc)
    except Exception as exc:  # not the driver's: this host failed, not the caller
        host_status.record_down(host, recheck)
        return HostFailure(host, unexpected_failure(exc), Verdict.UNREACHABLE, exc)
    try:
        role = reported_role(driver, connection) or asked_role(connection)
    except Exception as exc:  # the server went away at once
        driver.close_quietly(connection)
        host_status.record_down(host, recheck)
        if isinstance(exc, driver.module.Error):
            reason = driver.connect_failure_reason(exc)
        else:
            reason = unexpected_failure(exc)
        return HostFailure(host, reason, Verdict.UNREACHABLE, exc)
    host_status.record_role(host, role, recheck)
    return Landing(
        connection,
        host,
        role,
        began=began,
        ended=time.monotonic(),
        pid=driver.backend_pid(connection),
        fd=driver.socket_fd(connection),
    )


def _drop_tracebacks(error: BaseException | None) -> None:
    """Let go of the frames of ``error`` and of the errors chained to it."""
    pending, seen = [error], set()
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        exc.__traceback__ = None
        pending += [exc.__cause__, exc.__context__]


def one_host_params(conn_params: Mapping[str, Any], host: Host, timeout: int) -> dict[str, Any]:
    """The alias's connection parameters narrowed to one host, any role, ``timeout`` s.

    ``conn_params`` comes from the backend's ``failover_connection_params()``, which
    already dropped the keys libpq does not know (``failover``, Django's own
    options) and the load balancing this backend does itself.
    """
    params = {key: value for key, value in conn_params.items() if key != "cursor_factory"}
    params.update(
        host=host.host,
        port=host.port,
        # Each host's role is reported; the alias's choice is made from them.
        target_session_attrs="any",
        connect_timeout=timeout,
    )
    return params
