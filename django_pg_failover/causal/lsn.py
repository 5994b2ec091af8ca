"""WAL positions (LSNs) as PostgreSQL writes them, and the tokens that carry them.

A position is PostgreSQL's ``pg_lsn``: a byte offset into the write-ahead log,
written ``X/Y`` (two hexadecimal 32-bit halves). Kept as an int, positions
compare as numbers, and they keep comparing correctly across a failover: a
promoted standby starts its new timeline at the position it had replayed and
numbers its WAL on from there, so a position taken on the old primary is
reached on the new timeline by every server that holds the write (a write the
new primary never received is lost with the old timeline anyway).

A token is a scope's positions as text, ``alias@X/Y`` per primary alias joined
by commas: what :func:`django_pg_failover.causal.position` hands out and
:func:`~django_pg_failover.causal.resume` takes back. Parsing is strict (a
token may come from a cookie: anything else is refused, never guessed at).
"""

from __future__ import annotations

import re

_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
_MAX_ALIASES = 16  # a token names a few primary aliases; more is not one of ours


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` as a number; ValueError for anything else."""
    match = _LSN.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a WAL position: {text!r:.40}")
    return (int(match[1], 16) << 32) | int(match[2], 16)


def format_lsn(position: int) -> str:
    if not 0 <= position < 1 << 64:
        raise ValueError(f"not a WAL position: {position!r}")
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def encode(positions: dict[str, int]) -> str:
    """Positions by primary alias as one token ('' for none)."""
    for alias in positions:
        if not alias or "@" in alias or "," in alias:
            raise ValueError(f"alias {alias!r} cannot be carried in a token")
    return ",".join(f"{alias}@{format_lsn(p)}" for alias, p in sorted(positions.items()))


def decode(token: str) -> dict[str, int]:
    """A token back into positions by alias; ValueError if it is not one."""
    if not isinstance(token, str):
        raise ValueError("a token is a string")
    if not token:
        return {}
    items = token.split(",")
    if len(items) > _MAX_ALIASES:
        raise ValueError("too many positions in one token")
    positions: dict[str, int] = {}
    for item in items:
        alias, at, lsn = item.rpartition("@")
        if not at or not alias:
            raise ValueError(f"not alias@position: {item!r:.60}")
        value = parse_lsn(lsn)
        positions[alias] = max(value, positions.get(alias, 0))
    return positions
