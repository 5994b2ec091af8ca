"""``OPTIONS["failover"]["read_your_writes"]`` checked against the other aliases.

The setting names another alias, so it can only be judged with the whole of
``DATABASES`` at hand: by ``manage.py check`` (every rule below) and when the
replica alias first connects (the named alias must exist). The rules:

- the alias named exists, uses this backend, and is a read-write alias
  (``target_session_attrs`` ``read-write`` or ``primary``): positions are
  taken from its connection, which must be on the primary;
- it lists the same servers (the same hosts, in any order): a position of one
  cluster means nothing to another;
- the alias that names it reads from standbys (``target_session_attrs``
  ``standby``, ``prefer-standby``, ``read-only`` or ``any``): on a read-write
  alias the setting would do nothing, which is a mistake worth a word. (A
  test mirror makes a replica alias read-write on purpose: at run time such
  an alias just reads from the primary, where every write shows.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django_pg_failover import ENGINE
from django_pg_failover.exceptions import SettingsError
from django_pg_failover.settings.hosts import parse_hosts
from django_pg_failover.settings.options import target_session_attrs
from django_pg_failover.settings.redact import redacted

READ_YOUR_WRITES_CHECK = "django_pg_failover.E010"
KEYS = ("OPTIONS", "failover", "read_your_writes")

#: ``target_session_attrs`` of aliases whose connections are on the primary.
PRIMARY_ROLES = frozenset({"read-write", "primary"})


def read_your_writes_target(settings_dict: Mapping[str, Any]) -> str | None:
    """The alias an entry names in ``read_your_writes``, read without validating."""
    options = settings_dict.get("OPTIONS")
    if not isinstance(options, Mapping):
        return None
    failover = options.get("failover")
    if not isinstance(failover, Mapping):
        return None
    target = failover.get("read_your_writes")
    return target if isinstance(target, str) and target else None


def check_target_exists(databases: Mapping[str, Any], alias: str, target: str) -> None:
    """The rule the backend checks at run time: the alias named is one of this backend's."""
    entry = databases.get(target)
    if not isinstance(entry, Mapping):
        raise SettingsError(
            alias,
            KEYS,
            f"{redacted(target)} is not an alias of DATABASES",
            READ_YOUR_WRITES_CHECK,
        )
    if entry.get("ENGINE") != ENGINE:
        raise SettingsError(
            alias,
            KEYS,
            f"{redacted(target)} does not use {ENGINE}: positions are read from this "
            "backend's primary alias",
            READ_YOUR_WRITES_CHECK,
        )


def read_your_writes_problems(databases: Mapping[str, Any]) -> list[SettingsError]:
    """Every problem of every ``read_your_writes`` of ``databases`` (``manage.py check``)."""
    found: list[SettingsError] = []
    for alias, entry in databases.items():
        if not isinstance(entry, Mapping) or entry.get("ENGINE") != ENGINE:
            continue
        target = read_your_writes_target(entry)
        if target is None or target == alias:  # the policy reports a self-reference
            continue
        try:
            _check(databases, alias, entry, target)
        except SettingsError as exc:
            found.append(exc)
    return found


def _check(databases: Mapping[str, Any], alias: str, entry: Mapping[str, Any], target: str) -> None:
    check_target_exists(databases, alias, target)
    other = databases[target]
    other_options = other.get("OPTIONS") or {}
    if not isinstance(other_options, Mapping):
        return  # the target's own check reports it
    if target_session_attrs(other_options) not in PRIMARY_ROLES:
        raise SettingsError(
            alias,
            KEYS,
            f"{redacted(target)} is not a read-write alias (its target_session_attrs is "
            f"{redacted(target_session_attrs(other_options))}): name the alias that writes",
            READ_YOUR_WRITES_CHECK,
        )
    options = entry.get("OPTIONS") or {}
    own = target_session_attrs(options) if isinstance(options, Mapping) else None
    if own in PRIMARY_ROLES:
        raise SettingsError(
            alias,
            KEYS,
            f"this alias connects to the primary (target_session_attrs {own}): "
            "read_your_writes is for an alias that reads from standbys",
            READ_YOUR_WRITES_CHECK,
        )
    try:
        mine = parse_hosts(entry.get("HOST", ""), entry.get("PORT", ""), alias)
        theirs = parse_hosts(other.get("HOST", ""), other.get("PORT", ""), target)
    except SettingsError:
        return  # reported by the alias's own checks
    if set(mine) != set(theirs):
        raise SettingsError(
            alias,
            KEYS,
            f"{redacted(target)} lists other servers: a write position of one cluster "
            "says nothing about another",
            READ_YOUR_WRITES_CHECK,
        )
