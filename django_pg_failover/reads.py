"""Opt-in retry of reads whose connection was lost (``OPTIONS["failover"]["retry_reads"]``).

The rule, all of which must hold (written down in the docs, tested case by case):

- the query failed because the connection was lost (not any other error);
- no atomic block is open and the connection is in autocommit mode;
- it ran on an ordinary (client-side) cursor: psycopg2 fetches every row
  during ``execute()``, so the failed query had returned nothing yet;
- the SQL is one plain ``SELECT``: it starts with ``SELECT``, has no locking
  clause (``FOR UPDATE``/``FOR NO KEY UPDATE``/``FOR SHARE``/``FOR KEY
  SHARE``), no ``INTO``, no second statement, and calls no function known to
  have side effects (``nextval``, ``setval``, ``set_config``,
  ``txid_current``, ``lo_*``, ``dblink*``, any ``pg_*``).

Such a query is re-run once, on a new connection. A function of your own with
side effects called from a SELECT cannot be recognised: do not enable
``retry_reads`` if you have any.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from django.db.backends.postgresql.base import CursorDebugWrapper
from django.db.backends.utils import CursorWrapper
from django.db.utils import OperationalError

logger = logging.getLogger("django_pg_failover")

_SELECT = re.compile(r"\s*SELECT\b", re.IGNORECASE)
_NOT_PLAIN = re.compile(
    r"\bFOR\s+(?:NO\s+KEY\s+)?UPDATE\b"
    r"|\bFOR\s+(?:KEY\s+)?SHARE\b"
    r"|\bINTO\b"
    r"|;\s*\S",
    re.IGNORECASE,
)
_SIDE_EFFECT_CALL = re.compile(
    r"\b(?:nextval|setval|set_config|txid_current|lo_\w+|dblink\w*|pg_\w+)\s*\(",
    re.IGNORECASE,
)


def is_retryable_read(sql: object) -> bool:
    """True for one plain SELECT with no locking clause and no known side effect."""
    return (
        isinstance(sql, str)
        and _SELECT.match(sql) is not None
        and _NOT_PLAIN.search(sql) is None
        and _SIDE_EFFECT_CALL.search(sql) is None
    )


class ReadRetryMixin:
    """Re-run a retryable read once after the connection under it was lost."""

    def execute(self, sql: Any, params: Any = None) -> Any:
        try:
            return super().execute(sql, params)
        except OperationalError as exc:
            if not self.db.may_retry_read(sql, exc, self.cursor):
                raise
            logger.warning(
                "database alias %r: re-running a read whose connection was lost",
                self.db.alias,
            )
            self.db.ensure_connection()
            self.cursor = self.db.create_cursor()
            return super().execute(sql, params)


class ReadRetryCursorWrapper(ReadRetryMixin, CursorWrapper):
    pass


class ReadRetryCursorDebugWrapper(ReadRetryMixin, CursorDebugWrapper):
    pass
