"""Which aliases are primary aliases of a replica alias (their writes are marked).

Read from Django's ``connections.settings`` when an alias connects, and
computed again only when aliases are added or removed (a primary alias must
mark its writes before any replica alias was ever used in the process: the
first write of a thread may come first).
"""

from __future__ import annotations

from django_pg_failover import ENGINE
from django_pg_failover.settings.causal import read_your_writes_target

_seen: tuple | None = None
_targets: frozenset[str] = frozenset()


def primary_aliases() -> frozenset[str]:
    global _seen, _targets
    from django.db import connections

    databases = connections.settings
    # Aliases are added at the end: the last one's name tells an alias removed and
    # another added from no change at all.
    key = (id(databases), len(databases), next(reversed(databases), None))
    if key != _seen:
        _targets = frozenset(
            target
            for entry in list(databases.values())
            if entry.get("ENGINE") == ENGINE
            and (target := read_your_writes_target(entry)) is not None
        )
        _seen = key
    return _targets
