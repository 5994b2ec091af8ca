"""Which aliases are primary aliases of a replica alias (their writes are marked).

Read from Django's ``connections.settings`` at the first connect of each
alias's wrapper (a primary alias must mark its writes before any replica
alias was ever used in the process: the first write of a thread may come
first), and computed again only when aliases are added or removed. A replica
alias added after its primary alias's wrapper connected sets that wrapper's
part itself when it connects (:mod:`django_pg_failover.base`).
"""

from __future__ import annotations

from typing import Any

from django.db import connections

from django_pg_failover import ENGINE
from django_pg_failover.settings.causal import read_your_writes_target

_databases: Any = None
_shape: tuple[int, Any] | None = None
_targets: frozenset[str] = frozenset()


def primary_aliases() -> frozenset[str]:
    global _databases, _shape, _targets
    databases = connections.settings
    # Aliases are added at the end: the count and the last one's name tell an
    # alias removed and another added from no change at all.
    shape = (len(databases), next(reversed(databases), None))
    if databases is not _databases or shape != _shape:
        _targets = frozenset(
            target
            for entry in list(databases.values())
            if entry.get("ENGINE") == ENGINE
            and (target := read_your_writes_target(entry)) is not None
        )
        _databases, _shape = databases, shape
    return _targets
