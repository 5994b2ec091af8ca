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
- it ran on an ordinary (client-side) cursor: psycopg2 fetches every row
  during ``execute()``, so the failed query had returned nothing yet;
- the SQL is one plain ``SELECT``: it starts with ``SELECT``, has no locking
  clause (``FOR UPDATE``/``FOR NO KEY UPDATE``/``FOR SHARE``/``FOR KEY
  SHARE``), no ``INTO``, no second statement, no comment, no quoted or
  schema-qualified function call, and calls no function known to have side
  effects (``nextval``, ``setval``, ``setseed``, ``set_config``,
  ``txid_current``, ``lo_*``, ``loread``, ``lowrite``, ``dblink*``,
  ``query_to_xml*``, ``cursor_to_xml*``, ``brin_*``, ``gin_*``, any ``pg_*``);
  and no parameter is raw SQL (``psycopg2.extensions.AsIs``).

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

from . import errors

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


def has_raw_sql_param(params: Any) -> bool:
    values = params.values() if isinstance(params, Mapping) else params or ()
    return any(errors.is_raw_sql(value) for value in values)


class ReadRetryMixin:
    """Re-run a retryable read once after the connection under it was lost."""

    def execute(self, sql: Any, params: Any = None) -> Any:
        retryable = self.db.read_retry_possible(sql, params)
        if not retryable:  # a retryable read leaves the session as it was
            self.db.note_statement(sql, params)
        try:
            return super().execute(sql, params)
        except OperationalError as exc:
            if not (retryable and self.db.may_retry_read(exc, self.cursor)):
                raise
            logger.warning(
                "database alias %r: re-running a read whose connection was lost",
                self.db.alias,
            )
            self.db.ensure_connection()
            self.cursor = self.db.create_cursor()
            return super().execute(sql, params)

    def executemany(self, sql: Any, param_list: Any) -> Any:
        self.db.note_statement(sql)
        return super().executemany(sql, param_list)

    def callproc(self, procname: Any, params: Any = None, kparams: Any = None) -> Any:
        self.db.note_statement(None)  # a procedure may do anything to the session
        return super().callproc(procname, params, kparams)


class ReadRetryCursorWrapper(ReadRetryMixin, CursorWrapper):
    pass


class ReadRetryCursorDebugWrapper(ReadRetryMixin, CursorDebugWrapper):
    pass
