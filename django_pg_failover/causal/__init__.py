"""Read your own writes on replica aliases: the public API.

A replica alias with ``OPTIONS["failover"]["read_your_writes"] = "default"``
serves a read only from a server that has replayed what this thread's scope
committed through ``default`` (:mod:`.routing`). The scope is the thread,
renewed at each request (:mod:`.scope`); these functions carry it further:

- :func:`position` gives the scope's positions as a short string (a token);
  :func:`carried` too, but never fails: writes whose primary cannot be asked
  (a failover under way) are carried as pending, for the next scope to ask;
- :func:`resume` makes the current scope wait for a token's positions too;
- :func:`scope` runs a block in a fresh scope (a Celery task, a command),
  optionally resumed from a token, and restores the previous one after.

A token is not secret (WAL positions), but it routes reads: whatever carries
it through a client signs it (:class:`~django_pg_failover.middleware.ReadYourWritesMiddleware`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django_pg_failover.causal import lsn
from django_pg_failover.causal import scope as _scope

__all__ = ["carried", "new_scope", "position", "resume", "scope", "wrote"]


def position() -> str:
    """This scope's positions as a token ('' if it neither wrote nor resumed any).

    Positions of writes not taken yet are asked of their primary aliases now
    (one round trip each).
    """
    from django_pg_failover.causal.routing import take_position

    current = _scope.current()
    for target in sorted(current.written):
        take_position(current, target)
    return lsn.encode(current.positions)


def carried() -> str:
    """:func:`position` for a client to carry: writes whose primary cannot be asked
    now are carried as pending (the next scope asks its primary then)."""
    from django.db import DatabaseError

    try:
        return position()
    except DatabaseError:
        current = _scope.current()
        carry: dict[str, lsn.Position | None] = {**current.positions}
        for alias in current.written:
            carry[alias] = None
        return lsn.encode(carry)


def resume(token: str) -> None:
    """Reads in this scope wait for ``token``'s positions too; ValueError if it is not a token."""
    _scope.current().merge(lsn.decode(token))


def wrote() -> bool:
    """Did this scope commit writes through a primary alias of a replica alias?"""
    return _scope.current().wrote()


def new_scope() -> None:
    """Start this thread afresh: later reads wait for no earlier write."""
    _scope.renew()


@contextmanager
def scope(token: str | None = None) -> Iterator[None]:
    """A fresh scope for the block (resumed from ``token``); the previous one after."""
    fresh = _scope.Scope()
    if token:
        fresh.merge(lsn.decode(token))
    previous = _scope.replace(fresh)
    try:
        yield
    finally:
        _scope.replace(previous)
