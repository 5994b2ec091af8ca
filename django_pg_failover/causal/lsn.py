"""WAL positions as PostgreSQL writes them, with their timeline, and the tokens that carry them.

An LSN is PostgreSQL's ``pg_lsn``: a byte offset into the write-ahead log,
written ``X/Y`` (two hexadecimal 32-bit halves), kept here as an int. A
*position* is the pair (timeline, LSN) of the primary that gave it.

Why the timeline: LSNs alone are timeline-blind. A promoted standby starts a
new timeline at the LSN it had replayed (the switch point) and numbers its WAL
on from there. A standby that received more of the old primary's WAL than the
promoted one (it diverged, and cannot follow the new timeline without a
rewind) shows a replay LSN beyond the switch point that is *not* the new
primary's history: by LSN alone it would look as if it had replayed the new
primary's first writes. So a server has replayed a position only if it is on
that position's timeline or a later one, and its replay LSN is at least the
position's (:func:`covers`). Positions from the old timeline stay valid on
the new one: below the switch point the history is common, beyond it the
write was lost with the old timeline.

Positions merge by taking the later timeline's (then the higher LSN): a
position of a later timeline supersedes, as its primary's history holds
everything of the earlier one that survived.

A token is a scope's positions as text, ``alias@T:X/Y`` per primary alias
joined by commas (``T``: the timeline, decimal), or ``alias@pending`` for
writes whose position could not be taken (their primary was unreachable):
whoever resumes it asks that alias's primary for its position then, which
covers the writes if they survived. It is what
:func:`django_pg_failover.causal.position` hands out and
:func:`~django_pg_failover.causal.resume` takes back. Parsing is strict (a
token may come from a cookie: anything else is refused, never guessed at).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: (timeline, LSN).
Position = tuple[int, int]

NOWHERE: Position = (0, 0)
#: In a token: writes whose position is still to be taken (None in positions).
PENDING = "pending"

_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
_TIMELINE = re.compile(r"[1-9][0-9]{0,9}")
_MAX_ALIASES = 16  # a token names a few primary aliases; more is not one of ours


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` as a number; ValueError for anything else."""
    match = _LSN.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a WAL position: {text!r:.40}")
    return (int(match[1], 16) << 32) | int(match[2], 16)


def format_lsn(lsn: int) -> str:
    if not 0 <= lsn < 1 << 64:
        raise ValueError(f"not a WAL position: {lsn!r}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def timeline_of_walfile(name: str) -> int:
    """The timeline a WAL file name starts with (``pg_walfile_name()``: 8 hex digits)."""
    return int(name[:8], 16)


def covers(replayed: Position, position: Position) -> bool:
    """Has a server whose replay reached ``replayed`` replayed ``position``?"""
    return replayed[0] >= position[0] and replayed[1] >= position[1]


def later(a: Position, b: Position) -> Position:
    """Of two positions of one primary alias, the one that supersedes."""
    return a if a >= b else b


def encode(positions: Mapping[str, Position | None]) -> str:
    """Positions by primary alias as one token ('' for none; None: pending)."""
    for alias in positions:
        if not alias or "@" in alias or "," in alias:
            raise ValueError(f"alias {alias!r} cannot be carried in a token")
    return ",".join(
        f"{alias}@{PENDING if p is None else f'{p[0]}:{format_lsn(p[1])}'}"
        for alias, p in sorted(positions.items())
    )


def decode(token: str) -> dict[str, Position | None]:
    """A token back into positions by alias (None: pending); ValueError if it is not one."""
    if not isinstance(token, str):
        raise ValueError("a token is a string")
    if not token:
        return {}
    items = token.split(",")
    if len(items) > _MAX_ALIASES:
        raise ValueError("too many positions in one token")
    positions: dict[str, Position | None] = {}
    for item in items:
        alias, at, rest = item.rpartition("@")
        if at and alias and rest == PENDING:
            positions[alias] = None  # a position to take supersedes any given
            continue
        timeline, colon, lsn = rest.partition(":")
        if not at or not alias or not colon or not _TIMELINE.fullmatch(timeline):
            raise ValueError(f"not alias@timeline:position: {item!r:.60}")
        position = (int(timeline), parse_lsn(lsn))
        if alias not in positions:
            positions[alias] = position
        elif (known := positions[alias]) is not None:
            positions[alias] = later(position, known)
    return positions
