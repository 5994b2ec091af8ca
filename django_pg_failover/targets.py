"""``target_session_attrs``: which servers a connection may land on.

The backend connects to one host at a time and judges the server itself, from
what the server reports at start-up (PostgreSQL 14 and later report
``in_hot_standby`` and ``default_transaction_read_only``), with libpq's rules.
"""

from __future__ import annotations

import enum


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
