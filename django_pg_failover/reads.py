"""Opt-in retry of reads whose connection was lost (``OPTIONS["failover"]["retry_reads"]``).

The rule, all of which must hold (written down in the docs, tested case by case):

- the query failed because the connection was lost (not any other error);
- no atomic block is open, the connection is in autocommit mode, and the
  server had no transaction open on it (a ``BEGIN`` sent as raw SQL counts);
- nothing run on that connection before could have left state in its session
  that the new one would lack: every earlier statement was itself a retryable
  read or a plain ``INSERT``/``UPDATE``/``DELETE``/``MERGE`` (no ``SET``,
  ``set_config()``, advisory lock, temporary table, ``PREPARE``, ``LISTEN``, DDL
  or procedure call);
- it ran on an ordinary (client-side) cursor: psycopg2 and psycopg 3 both
  fetch every row during ``execute()``, so the failed query had returned
  nothing yet;
- the SQL is one plain ``SELECT``: it starts with ``SELECT``, has no locking
  clause (``FOR UPDATE``/``FOR NO KEY UPDATE``/``FOR SHARE``/``FOR KEY
  SHARE``), no ``INTO``, no second statement, no comment, no quoted or
  schema-qualified function call, and calls no function known to have side
  effects (``nextval``, ``setval``, ``setseed``, ``set_config``,
  ``txid_current``, ``lo_*``, ``loread``, ``lowrite``, ``dblink*``,
  ``query_to_xml*``, ``cursor_to_xml*``, ``brin_*``, ``gin_*``, any ``pg_*``);
  and no parameter is raw SQL (psycopg2's ``AsIs``; psycopg 3 has no such type).

Such a query is re-run once, on a new connection. A function of your own, or
of an extension, with side effects called unqualified from a SELECT cannot be
recognised: do not enable ``retry_reads`` if you have any.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from django.db.backends.postgresql.base import CursorDebugWrapper
from django.db.backends.utils import CursorWrapper
from django.db.utils import OperationalError

from .drivers import TransactionStatus

logger = logging.getLogger("django_pg_failover")

_SELECT = re.compile(r"\s*SELECT\b", re.IGNORECASE)
_WRITE = re.compile(r"\s*(?:INSERT|UPDATE|DELETE|MERGE)\b", re.IGNORECASE)
_LOCKING_OR_INTO = re.compile(
    r"\bFOR\s+(?:NO\s+KEY\s+)?UPDATE\b|\bFOR\s+(?:KEY\s+)?SHARE\b|\bINTO\b",
    re.IGNORECASE,
)
_SECOND_STATEMENT = re.compile(r";\s*\S")
# What could hide a call from _SIDE_EFFECT_CALL: comments, Unicode escapes,
# schema-qualified names.
_HIDDEN_CALL = re.compile(r'/\*|--|\bU&|\.\s*(?:\w+|"[^"]*")\s*\(', re.IGNORECASE)
# A quoted name called as a function; in INSERT INTO "table" (...) it is not one.
_QUOTED_CALL = re.compile(r'"\s*\(')
_SIDE_EFFECT_CALL = re.compile(
    r"\b(?:nextval|setval|setseed|set_config|txid_current|lo_\w+|loread|lowrite|dblink\w*"
    r"|query_to_xml\w*|cursor_to_xml\w*|brin_\w+|gin_\w+|pg_\w+)\s*\(",
    re.IGNORECASE,
)


def _calls_nothing_known_to_write(sql: str) -> bool:
    return (
        _SECOND_STATEMENT.search(sql) is None
        and _HIDDEN_CALL.search(sql) is None
        and _SIDE_EFFECT_CALL.search(sql) is None
    )


def is_retryable_read(sql: object) -> bool:
    """True for one plain SELECT with no locking clause and no known side effect."""
    return (
        isinstance(sql, str)
        and _SELECT.match(sql) is not None
        and _LOCKING_OR_INTO.search(sql) is None
        and _QUOTED_CALL.search(sql) is None
        and _calls_nothing_known_to_write(sql)
    )


def leaves_session_unchanged(sql: object) -> bool:
    """True for a statement that, run in autocommit, leaves nothing in the session.

    A retryable read, or one plain INSERT/UPDATE/DELETE/MERGE: what the ORM sends.
    """
    return is_retryable_read(sql) or (
        isinstance(sql, str)
        and _WRITE.match(sql) is not None
        and _calls_nothing_known_to_write(sql)
    )


def has_raw_sql_param(params: Any, is_raw_sql: Any) -> bool:
    values = params.values() if isinstance(params, Mapping) else params or ()
    return any(is_raw_sql(value) for value in values)


class ReadRetryState:
    """Per connection: may a lost read be re-run, and has anything changed the session?"""

    def __init__(self) -> None:
        self.enabled = False
        #: Something ran on this connection that a new session would lack.
        self.session_changed = False

    def connected(self, enabled: bool) -> None:
        self.enabled = enabled
        self.session_changed = False


def note_statement(db: Any, sql: Any, params: Any = None) -> None:
    reads = db.reads
    if not reads.session_changed and (
        not leaves_session_unchanged(sql) or has_raw_sql_param(params, db.driver.is_raw_sql)
    ):
        reads.session_changed = True


def read_retry_possible(db: Any, sql: Any, params: Any) -> bool:
    """Before running ``sql``: could the rule of this module let it run again?"""
    return (
        db.connection is not None
        and not db.in_atomic_block
        and db.autocommit
        and not db.reads.session_changed
        and db.driver.transaction_status(db.connection) is TransactionStatus.IDLE
        and is_retryable_read(sql)
        and not has_raw_sql_param(params, db.driver.is_raw_sql)
    )


def may_retry_read(db: Any, exc: OperationalError, raw_cursor: Any) -> bool:
    """After it failed: was the connection lost under it (and closed since)?"""
    return (
        db.reads.enabled
        and exc.__cause__ is not None
        and exc.__cause__ is db.lost_error
        and db.connection is None
        and not db.in_atomic_block
        and db.autocommit
        and getattr(raw_cursor, "name", None) is None
    )


class ReadRetryMixin:
    """Re-run a retryable read once after the connection under it was lost."""

    def execute(self, sql: Any, params: Any = None) -> Any:
        retryable = read_retry_possible(self.db, sql, params)
        if not retryable:  # a retryable read leaves the session as it was
            note_statement(self.db, sql, params)
        try:
            return super().execute(sql, params)
        except OperationalError as exc:
            if not (retryable and may_retry_read(self.db, exc, self.cursor)):
                raise
            logger.warning(
                "database alias %r: re-running a read whose connection was lost",
                self.db.alias,
            )
            self.db.ensure_connection()
            self.cursor = self.db.create_cursor()
            return super().execute(sql, params)

    def executemany(self, sql: Any, param_list: Any) -> Any:
        note_statement(self.db, sql)
        return super().executemany(sql, param_list)

    def callproc(self, procname: Any, params: Any = None, kparams: Any = None) -> Any:
        note_statement(self.db, None)  # a procedure may do anything to the session
        return super().callproc(procname, params, kparams)


class ReadRetryCursorWrapper(ReadRetryMixin, CursorWrapper):
    pass


class ReadRetryCursorDebugWrapper(ReadRetryMixin, CursorDebugWrapper):
    pass
