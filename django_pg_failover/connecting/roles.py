"""A server's role, and ``target_session_attrs``: which servers a connection may land on.

The backend connects to one host at a time and judges the server itself, with
libpq's rules. The role is read in one place (:func:`reported_role`,
:func:`asked_role`), whoever asks: a connect attempt, the watcher, a lost
connection, the pool's health check, ``manage.py pg_hosts``.

- PostgreSQL 14 and later report ``in_hot_standby`` and
  ``default_transaction_read_only`` at start-up and whenever they change: no
  round trip;
- an older server reports neither, and is asked with one query
  (:data:`ROLE_SQL`), as is a server whose report may be stale (a connection
  held open, whose settings are only brought up to date by a message).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django_pg_failover.drivers import Driver

#: One round trip: the server's recovery state and whether new sessions are read-only.
ROLE_SQL = "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')"


class Role(enum.Enum):
    PRIMARY = "primary"
    #: Not in recovery, but new transactions are read-only (a fenced primary).
    READ_ONLY_PRIMARY = "read-only primary"
    STANDBY = "standby"

    @property
    def in_recovery(self) -> bool:
        return self is Role.STANDBY

    @property
    def read_only(self) -> bool:
        return self is not Role.PRIMARY


def role_from(in_hot_standby: bool, default_read_only: bool) -> Role:
    if in_hot_standby:
        return Role.STANDBY
    return Role.READ_ONLY_PRIMARY if default_read_only else Role.PRIMARY


def _suits(role: Role, target_session_attrs: str) -> bool:
    if target_session_attrs == "read-write":
        return not role.read_only
    if target_session_attrs == "read-only":
        return role.read_only
    if target_session_attrs == "primary":
        return not role.in_recovery
    if target_session_attrs in ("standby", "prefer-standby"):
        return role.in_recovery
    return True  # any


_TARGETS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
# Keyed by the role's value: an enum member's own hash is computed in Python, and
# this is asked on every connect.
_SUITS = {(role._value_, target): _suits(role, target) for role in Role for target in _TARGETS}


def suits(role: Role, target_session_attrs: str) -> bool:
    """Whether libpq would accept a server of ``role`` for ``target_session_attrs``.

    ``prefer-standby`` is settled by the caller: a standby suits it, and any
    server does once no standby answered.
    """
    return _SUITS[role._value_, target_session_attrs]


def accepts_fallback(target_session_attrs: str) -> bool:
    """Whether any server will do when none suits (libpq's second pass)."""
    return target_session_attrs == "prefer-standby"


#: Sessions that must be able to write: a read-only error on one means the
#: server was demoted (or fenced) under it.
WRITABLE = frozenset({"read-write", "primary"})


def reported_role(driver: Driver, connection: Any) -> Role | None:
    """The role the server reported (PostgreSQL 14+); None if it reports none."""
    hot_standby = driver.parameter_status(connection, "in_hot_standby")
    if hot_standby is None:
        return None
    read_only = driver.parameter_status(connection, "default_transaction_read_only")
    return role_from(hot_standby == "on", read_only == "on")


def asked_role(connection: Any) -> Role:
    """The role the server gives when asked (one round trip), any server version.

    A transaction the question opens (autocommit off) is rolled back.
    """
    with connection.cursor() as cursor:
        cursor.execute(ROLE_SQL)
        in_recovery, read_only = cursor.fetchone()
    if not connection.autocommit:
        connection.rollback()
    return role_from(bool(in_recovery), read_only == "on")


def wrong_role_reason(target_session_attrs: str, role: Role) -> str:
    """libpq's words for a server of the wrong role (log readers and receivers know them)."""
    if target_session_attrs in ("read-write", "read-only"):
        return "session is read-only" if role.read_only else "session is not read-only"
    if role.in_recovery:
        return "server is in hot standby mode"
    return "server is not in hot standby mode"
