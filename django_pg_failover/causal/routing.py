"""Where a read through a replica alias runs when its scope has written.

The rule: a read through an alias with ``read_your_writes`` is served only by
a server that has replayed the scope's position for the primary alias it
names. How:

1. the scope has no write and no position for that primary alias: the read
   runs on the replica alias's own connection, as without the feature (no
   round trip, no clock read);
2. writes were committed since the last position was taken: the position is
   asked of the primary alias's connection in this thread (one
   ``pg_current_wal_insert_lsn()``), once for the whole batch;
3. the replica connection's server is known to have replayed it: the read
   runs there, no round trip. Known from the last answer on this connection,
   or from any connection of the process to the same server *incarnation*
   (host and ``pg_postmaster_start_time()``): a restarted standby may show
   less than it had replayed before (pages not yet written when it stopped
   are replayed again), so its old answers do not count for it;
4. else its server is asked (``pg_is_in_recovery(), pg_last_wal_replay_lsn()``
   and its timeline),
   again every few milliseconds for up to ``read_your_writes_wait`` seconds;
   replayed: the read runs there;
5. still behind: the read runs on the primary alias's connection (a cursor of
   that connection stands in for the replica's for this one statement).

Connection level, not router level: the replica alias keeps its one connection
(and its failover handling), and a statement is redirected only when that
connection's server is behind; the router's choice (``db_for_read``) is made
before the query exists and cannot see which server the replica alias's
connection is on.

Why the *insert* position: a ``COMMIT`` returns once its record is flushed
(``synchronous_commit`` on), so the write position would cover it too; with
``synchronous_commit = off`` it returns before its record is even written,
and only the insert position is sure to include it. A standby may wait a few
milliseconds more for WAL inserted after the commit (the WAL writer sends it
within ``wal_writer_delay``): a bounded cost, where the write position could
serve a stale read.

A replica connection on a server that is not in recovery (``prefer-standby``
with no standby left, or a standby promoted under it) serves the read only if
it is the server the primary alias is connected to: another primary is a
split brain, whose positions mean nothing.

Positions survive a failover of the primary (:mod:`.lsn`): the new primary
takes later positions from its own WAL, which carries on the old one's
numbering, on a later timeline; a standby serves a position only once it is
on that timeline (a standby that diverged from the new primary never is).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from django.db.backends.utils import CursorDebugWrapper, CursorWrapper

from django_pg_failover.causal.lsn import NOWHERE, Position, covers, parse_lsn, timeline_of_walfile
from django_pg_failover.causal.scope import Scope

logger = logging.getLogger("django_pg_failover")

INSERT_POSITION = (
    "SELECT pg_current_wal_insert_lsn()::text, pg_walfile_name(pg_current_wal_insert_lsn())"
)
# The standby's timeline: its WAL receiver's (readable with pg_read_all_stats
# only), or its last restartpoint's, whichever is later. The restartpoint's lags
# after a standby moves to a new timeline (until its next restartpoint): reads
# with positions of the new timeline go to the primary meanwhile. Never ahead.
REPLAY_POSITION = (
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, pg_postmaster_start_time(),"
    " GREATEST((SELECT received_tli FROM pg_stat_wal_receiver),"
    " (SELECT timeline_id FROM pg_control_checkpoint()))"
)
# Between two questions to a standby that has not replayed yet: short at first
# (a streaming standby replays within a millisecond or two), then 10 ms.
FIRST_PAUSE = 0.001
LONGEST_PAUSE = 0.01


@dataclass
class ReadCounts:
    """Reads of scopes with a position, by where they ran (process-wide, for figures)."""

    standby_known: int = 0  # replayed per the connection's last answer: no round trip
    standby_asked: int = 0  # its server asked, at once or after waiting
    primary: int = 0  # served by the primary alias's connection
    positions_taken: int = 0


counts = ReadCounts()

#: The latest replay position each server incarnation (host, postmaster start) has
#: reported to any connection of the process (both parts only grow). Updated
#: without a lock: a lost race keeps an older answer, which only costs a question.
replayed_by_server: dict[tuple[Any, Any], Position] = {}


def connection_of(alias: str) -> Any:
    from django.db import connections

    return connections[alias]


def take_position(scope: Scope, target: str) -> Position:
    """Ask the primary alias's connection for its position; the scope keeps it."""
    primary = connection_of(target)
    primary.ensure_connection()
    with primary.wrap_database_errors, primary.connection.cursor() as cursor:
        cursor.execute(INSERT_POSITION)
        lsn, walfile = cursor.fetchone()
        position = (timeline_of_walfile(walfile), parse_lsn(lsn))
    scope.written.discard(target)
    scope.took = True
    scope.merge({target: position})
    counts.positions_taken += 1
    return scope.positions[target]


def position_for(scope: Scope, target: str) -> Position | None:
    if target in scope.written:
        return take_position(scope, target)
    return scope.positions.get(target)


def read_elsewhere(db: Any, scope: Scope) -> Any | None:
    """A cursor of the primary alias's connection if ``db`` (a replica alias's
    wrapper) cannot serve this scope's read; None when its own connection can."""
    target = db.causal_target
    position = position_for(scope, target)
    if position is None:
        return None
    if covers(db.causal_replayed, position):
        counts.standby_known += 1
        return None
    server = db.causal_server
    if server is not None and covers(replayed_by_server.get(server, NOWHERE), position):
        db.causal_replayed = replayed_by_server[server]
        counts.standby_known += 1
        return None
    if _serves(db, target, position):
        counts.standby_asked += 1
        return None
    counts.primary += 1
    logger.debug(
        "database alias %r: its server has not replayed this scope's writes; the read goes to %r",
        db.alias,
        target,
    )
    primary = connection_of(target)
    primary.ensure_connection()
    # A Django cursor of the primary alias's wrapper, not its own cursor class (which
    # would mark the scope written again): errors, losses and stalls are the primary's.
    wrapper = CursorDebugWrapper if primary.queries_logged else CursorWrapper
    return wrapper(primary.create_cursor(), primary)


def _serves(db: Any, target: str, position: Position) -> bool:
    """Has (or will within the wait) the replica connection's server replayed ``position``?"""
    connection = db.connection
    if connection is None:
        return True  # nothing to judge: the statement fails on its own, as it would
    deadline = None
    pause = FIRST_PAUSE
    while True:
        with db.wrap_database_errors, connection.cursor() as cursor:
            cursor.execute(REPLAY_POSITION)
            in_recovery, replayed, started, timeline = cursor.fetchone()
        if not in_recovery:
            primary = connection_of(target)
            primary.ensure_connection()
            if primary.server is not None and primary.server == db.server:
                db.causal_replayed = position  # the primary itself: up to date until lost
                return True
            return False
        db.causal_replayed = (timeline or 0, parse_lsn(replayed) if replayed else 0)
        db.causal_server = server = (db.server, started)
        known = replayed_by_server.get(server, NOWHERE)
        replayed_by_server[server] = (
            max(known[0], db.causal_replayed[0]),
            max(known[1], db.causal_replayed[1]),
        )
        if covers(db.causal_replayed, position):
            return True
        now = time.monotonic()
        if deadline is None:
            deadline = now + db.causal_wait
        remaining = deadline - now
        if remaining <= 0:
            return False
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, LONGEST_PAUSE)
