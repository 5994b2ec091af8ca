"""Whether a server's reported role is believed, or asked with a query.

A server (PostgreSQL 14+) reports its role at start-up (``in_hot_standby``,
``default_transaction_read_only``): believing it costs no round trip. A
pooler between the backend and the server breaks that: PgBouncer replays to
every new client what its *first* server connection reported, long after the
server behind it was demoted or promoted; other poolers report nothing, or
their own. The rules:

- ``OPTIONS["failover"]["role_check"] = "query"`` asks every host with one
  query (:data:`~.roles.ROLE_SQL`) at every new connection: one round trip.
- Otherwise the report is believed, except for a host whose report was
  contradicted once (:meth:`~.memory.HostStatus.distrust_reports`): it is
  asked from then on, in this process.
- Where the backend asks anyway (the process's watcher, a pool's health check,
  after a read-only error on a read-write session), the answer is compared with
  the report, which the question's round trip brought up to date (a server
  reports a change of role with its next reply, and poolers forward that
  within a session). A difference means the report came from elsewhere than
  the server: the host is distrusted.

- A session ended by an error of a pooler's own (PgBouncer sends its errors,
  "server login has been failing", "query_wait_timeout", "server conn
  crashed?", as SQLSTATE 08P01, protocol violation, which a server sends
  only to a client that broke the protocol) shows a pooler in the way: its
  host is distrusted too. Behind a pooler whose server is down the connect
  succeeds, with the replayed start-up message, and only the first query
  fails; asked, such a host fails at connect time, and the next host is tried.

The rule for "contradicted" is written once, in :func:`verified_role`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from django_pg_failover.connecting.memory import host_status
from django_pg_failover.connecting.roles import Role, asked_role, reported_role

if TYPE_CHECKING:
    from django_pg_failover.drivers import Driver
    from django_pg_failover.settings.hosts import Host

logger = logging.getLogger("django_pg_failover")

#: ``OPTIONS["failover"]["role_check"]``: ask every host (settings.policy.ROLE_CHECKS).
QUERY = "query"
#: protocol_violation: how PgBouncer ends a client's session of its own accord.
POOLER_ERROR = "08P01"


def must_ask(host: Host, role_check: str) -> bool:
    """Whether a new connection to ``host`` has its role asked rather than believed
    (a connect attempt asks :func:`verified_role`, else believes the report, or asks
    a server that reports nothing: before PostgreSQL 14)."""
    return role_check == QUERY or host in host_status.distrusted


def verified_role(driver: Driver, connection: Any, host: Host) -> Role:
    """The role the server gives when asked; a report that says otherwise after the
    question's round trip distrusts ``host`` (see the module's rules)."""
    role = asked_role(connection)
    reported = reported_role(driver, connection)
    if reported is not None and reported is not role:
        contradicted(host, reported, role)
    return role


def contradicted(host: Host, reported: Role, asked: Role) -> None:
    """``host`` reported ``reported`` while its server is ``asked``: ask it from now on."""
    if host_status.distrust_reports(host):
        logger.warning(
            "%s reported the role %s but its server is a %s when asked (a connection "
            "pooler replaying stale start-up parameters?): its role is asked with a "
            "query from now on (OPTIONS['failover']['role_check'] = 'query' asks every host)",
            host,
            reported.value,
            asked.value,
        )


def pooler_error(driver: Driver, error: BaseException, host: Host | None) -> None:
    """A lost session: if a pooler ended it (see the module's rules), distrust ``host``."""
    if (
        host is not None
        and driver.sqlstate(error) == POOLER_ERROR
        and host_status.distrust_reports(host)
    ):
        logger.warning(
            "%s ended a session with a connection pooler's error (SQLSTATE %s): its "
            "role is asked with a query from now on (a pooler's start-up message may "
            "replay a role its server no longer has)",
            host,
            POOLER_ERROR,
        )
