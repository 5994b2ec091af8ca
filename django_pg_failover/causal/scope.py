"""The causal scope: what this thread's work has written, and up to which position.

One scope per thread (a request, a task, a command), renewed at each
``request_started`` so that every request starts clean. It holds, per primary
alias (an alias some replica alias names in ``read_your_writes``):

- ``written``: the primary aliases through which something committed since
  their position was last taken. Marking is all a write costs (a set's
  ``add``): the position itself is asked of the primary only when a read on a
  replica alias needs it, once per batch of writes (:mod:`.routing`);
- ``positions``: the WAL position (timeline and LSN, :mod:`.lsn`) each primary
  alias had reached after this scope's writes (taken, or resumed from a
  token): reads through the replica alias are served only by a server that
  has replayed it.

A thread-local, not a context variable: Django runs a request's sync code,
signals and middleware in one thread (under ASGI too, thread-sensitive), and
the thread's database connections are the ones the writes went through.
"""

from __future__ import annotations

import threading

from django_pg_failover.causal.lsn import Position, later


class Scope:
    __slots__ = ("positions", "took", "written")

    def __init__(self) -> None:
        self.written: set[str] = set()
        self.positions: dict[str, Position] = {}
        #: A position of this scope's own writes was taken (not only resumed).
        self.took = False

    def wrote(self) -> bool:
        """Did this scope commit writes through a primary alias (not just resume some)?"""
        return bool(self.written) or self.took

    def merge(self, positions: dict[str, Position | None]) -> None:
        for alias, position in positions.items():
            if position is None:  # a token's pending writes: taken when a read needs it
                self.written.add(alias)
                continue
            known = self.positions.get(alias)
            self.positions[alias] = position if known is None else later(position, known)


class _Local(threading.local):
    def __init__(self) -> None:
        self.scope = Scope()


_local = _Local()


def current() -> Scope:
    return _local.scope


def renew() -> Scope:
    """A fresh scope for this thread (what ``request_started`` does)."""
    _local.scope = scope = Scope()
    return scope


def replace(scope: Scope) -> Scope:
    """Make ``scope`` this thread's; return the one it replaces."""
    previous, _local.scope = _local.scope, scope
    return previous


def new_request_scope(**kwargs: object) -> None:
    """``request_started``'s receiver: each request starts clean."""
    renew()
