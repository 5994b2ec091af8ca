"""Opt-in re-run of a read whose connection was lost (``OPTIONS["failover"]["retry_reads"]``).

A lost statement is re-run once, on a new connection, only when all of this holds
(written down in the docs, tested case by case on both drivers):

- it failed because the connection was lost (not any other error), outside
  atomic blocks, in autocommit mode, with no transaction open on the server
  (a ``BEGIN`` sent as raw SQL counts), on an ordinary client-side cursor
  (psycopg2 and psycopg 3 both fetch every row during ``execute()``, so the
  caller had received nothing yet);
- its text is a plain read (:mod:`.statements`): one ``SELECT`` that locks
  nothing, creates nothing and calls only built-ins that neither write nor
  change the session; no parameter is raw SQL (psycopg2's ``AsIs``; psycopg 3
  has no such type);
- nothing run on that connection before could have left state in the session
  that the new one would lack: every earlier statement was such a read or a
  plain ``INSERT``/``UPDATE``/``DELETE``/``MERGE`` into a table (no ``SET``,
  ``set_config()``, write to ``pg_settings``, advisory lock, temporary table,
  ``PREPARE``, ``LISTEN``, DDL, function of your own, or text the scanner
  cannot classify or does not read, being too long: any of these ends read
  retry until the next connection);
- the new session confirms what the text cannot show: every relation it reads
  is a plain table (or a partitioned table, or a materialized view) without
  row-level security, so no view, policy or foreign table runs code of its
  own, and every function it calls is immutable or stable (or one of a few
  volatile built-ins without side effects, such as ``random()``); and no
  name written after a dot (``t.audit``, ``(t).audit``) is the name of a
  volatile function the session can see: where the row has no column of
  that name, PostgreSQL calls ``audit(t)``. The check counts every visible
  volatile function of that name that can take one argument, whatever its
  type: defaults, ``VARIADIC``, polymorphic and ``record`` parameters all
  take a row, so matching types could only get it wrong. Which one the
  server would call, or whether the row has that column, is not worked out:
  a volatile function that shares a column's name costs a refusal, never a
  write run twice;
- and the re-run happens inside a read-only transaction: whatever the checks
  above could not see, a local write fails there instead of happening twice.

What no client can see, and what therefore must not exist where retry_reads is
on: a function that writes outside this server (``dblink``, a foreign server)
and is hidden behind an immutable or stable label, or a C function that lies
about its volatility. Names after a dot are checked for the lost read only: an
earlier statement that called a function of your own so (``t.take_lock``)
counts as a read, whatever that function did to the session.

The work is done where it costs nothing on the healthy path: the statement's
text is classified once and cached; the server is asked only after a loss.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Protocol

from django.db.backends.postgresql.base import CursorDebugWrapper
from django.db.backends.utils import CursorWrapper
from django.db.utils import DatabaseError, OperationalError

from django_pg_failover import metrics
from django_pg_failover.drivers import TRANSACTION_IDLE_CODE

if TYPE_CHECKING:
    from django_pg_failover.drivers import Driver
    from django_pg_failover.losing.loss import ConnectionLoss
from django_pg_failover.reads.statements import (
    SQL_CONSTRUCTS,
    Kind,
    Statement,
    cached_statement,
    classify,
)

logger = logging.getLogger("django_pg_failover")

# Volatile built-ins that neither write nor change anything a re-run could repeat.
_HARMLESS_VOLATILE = frozenset(
    {"random", "clock_timestamp", "timeofday", "gen_random_uuid", "statement_timestamp"}
)
# Relation kinds whose reading runs no code of their own: tables, partitioned
# tables, materialized views.
_PLAIN_RELKINDS = frozenset({"r", "p", "m"})

_RELATIONS_SQL = (
    "SELECT r.name, c.relkind, c.relrowsecurity FROM unnest(%s::text[]) AS r(name) "
    "LEFT JOIN pg_class c ON c.oid = to_regclass(r.name)"
)
_FUNCTIONS_SQL = (
    "SELECT f.name, array_agg(p.provolatile::text) FILTER (WHERE p.oid IS NOT NULL) "
    "FROM unnest(%s::text[]) AS f(name) "
    "LEFT JOIN pg_proc p ON p.proname = f.name AND pg_function_is_visible(p.oid) "
    "GROUP BY f.name"
)

# The volatile functions that "x.name" may call: those of that name that take one
# argument, of any type (defaults, VARIADIC, polymorphic and record parameters all
# take a row, a scalar too). A function without parameters or needing two cannot;
# nor can one with an "internal" parameter (no SQL expression yields that type:
# the tablesample methods system() and bernoulli() would otherwise stand in the
# way of columns of those names).
_ATTRIBUTES_SQL = (
    "SELECT DISTINCT p.proname FROM pg_proc p "
    "WHERE p.proname = ANY (%s::text[]) AND p.provolatile = 'v' "
    "AND p.pronargs >= 1 AND p.pronargs - p.pronargdefaults <= 1 "
    "AND NOT 'internal'::regtype = ANY (p.proargtypes) AND pg_function_is_visible(p.oid)"
)


def has_raw_sql_param(params: Any, raw_sql_type: type | None) -> bool:
    """Whether a parameter is SQL the driver pastes in as it is (run per read: the
    ORM's lists and dicts are told by their class, not by the ``Mapping`` ABC)."""
    if raw_sql_type is None or not params:
        return False
    kind = params.__class__
    if kind is dict or (kind is not list and kind is not tuple and isinstance(params, Mapping)):
        params = params.values()
    for value in params:  # noqa: SIM110 - a loop, not a generator per read
        if isinstance(value, raw_sql_type):
            return True
    return False


class ReadRetryState:
    """Per connection: may a lost read be re-run, and has anything changed the session?"""

    def __init__(self) -> None:
        self.enabled = False
        #: Something ran on this connection that a new session would lack.
        self.session_changed = False

    def connected(self, enabled: bool) -> None:
        self.enabled = enabled
        self.session_changed = False


class Reader(Protocol):
    """What re-running a read needs of a database wrapper (see ``base.py``)."""

    alias: str
    driver: Driver
    connection: Any
    in_atomic_block: bool
    autocommit: bool
    reads: ReadRetryState
    loss: ConnectionLoss
    wrap_database_errors: Any

    def ensure_connection(self) -> None: ...

    def create_cursor(self, name: str | None = None) -> Any: ...


def may_retry_read(db: Reader, exc: OperationalError, raw_cursor: Any) -> bool:
    """After it failed: was the connection lost under it (and closed since)?"""
    return (
        exc.__cause__ is not None
        and exc.__cause__ is db.loss.error
        and db.connection is None
        and not db.in_atomic_block
        and db.autocommit
        and getattr(raw_cursor, "name", None) is None
    )


def confirm_read(connection: Any, statement: Statement) -> str | None:
    """Ask the new session what the text cannot show. None: safe to re-run; else why not."""
    with connection.cursor() as cursor:
        if statement.relations:
            cursor.execute(_RELATIONS_SQL, [list(statement.relations)])
            for name, relkind, row_security in cursor.fetchall():
                if relkind is None:
                    return f"{name} is not a relation this session can see"
                if relkind not in _PLAIN_RELKINDS:
                    return f"{name} is not a plain table (relkind {relkind!r}): it may run code"
                if row_security:
                    return f"{name} has row-level security: its policies may run code"
        if statement.functions:
            cursor.execute(_FUNCTIONS_SQL, [list(statement.functions)])
            for name, volatilities in cursor.fetchall():
                if not volatilities:
                    if name not in SQL_CONSTRUCTS:
                        return f"{name}() is not a function this session can see"
                elif "v" in volatilities and name not in _HARMLESS_VOLATILE:
                    return f"{name}() is volatile: it may write or change the session"
        if statement.attributes:
            cursor.execute(_ATTRIBUTES_SQL, [list(statement.attributes)])
            for (name,) in cursor.fetchall():
                if name not in _HARMLESS_VOLATILE:
                    return (
                        f"x.{name} calls {name}(x) unless x has a column {name}, "
                        f"and {name}() is volatile: it may write or change the session"
                    )
    return None


def _control(db: Reader, sql: str) -> None:
    with db.wrap_database_errors, db.connection.cursor() as cursor:
        cursor.execute(sql)


class ReadRetryMixin(CursorWrapper):
    """Re-run a lost plain read once; note every statement that may change the session."""

    def execute(self, sql: Any, params: Any = None) -> Any:
        # Run before every query while retry_reads is on: a text seen before is
        # a dictionary lookup, the rest is inline.
        # Could the read be re-run if its connection were lost? Only outside
        # transactions, on a session nothing changed.
        db = self.db
        statement = (sql.__class__ is str and cached_statement(sql)) or classify(sql)
        kind = statement.kind
        if kind is Kind.READ:
            driver = db.driver
            raw_sql_type = driver.raw_sql_type
            if params and raw_sql_type is not None and has_raw_sql_param(params, raw_sql_type):
                kind = Kind.OTHER  # raw SQL pasted in: it may do anything
        if kind is Kind.OTHER:
            db.reads.session_changed = True
        elif (
            kind is Kind.READ
            and (connection := db.connection) is not None
            and not db.in_atomic_block
            and db.autocommit
            and not db.reads.session_changed
            and driver.transaction_status_code(connection) == TRANSACTION_IDLE_CODE
        ):
            try:
                return super().execute(sql, params)
            except OperationalError as exc:
                if not may_retry_read(db, exc, self.cursor):
                    raise
                return self._run_again(sql, params, statement, exc)
        return super().execute(sql, params)

    def _run_again(
        self, sql: Any, params: Any, statement: Statement, lost: OperationalError
    ) -> Any:
        db = self.db
        db.ensure_connection()
        connection = db.connection
        try:
            with db.wrap_database_errors:
                refusal = confirm_read(connection, statement)
        except DatabaseError:  # the new connection failed too
            raise lost from lost.__cause__  # the first loss stands, with its cause
        if refusal is not None:
            logger.warning(
                "database alias %r: a read lost with its connection is not re-run: %s",
                db.alias,
                refusal,
            )
            metrics.read_retried(db.alias, "refused")
            raise lost
        logger.warning("database alias %r: re-running a read whose connection was lost", db.alias)
        metrics.read_retried(db.alias, "rerun")
        self.cursor = db.create_cursor()
        # Explicit statements: in autocommit mode, the drivers' commit() would not
        # know of a transaction they did not open.
        _control(db, "BEGIN READ ONLY")
        try:
            result = super().execute(sql, params)
        except DatabaseError as exc:
            with suppress(DatabaseError):
                _control(db, "ROLLBACK")
            if db.driver.server_read_only(exc.__cause__):
                logger.warning(
                    "database alias %r: the re-run tried to write (%s): refused", db.alias, exc
                )
                raise lost from lost.__cause__
            raise
        _control(db, "COMMIT")
        return result

    def executemany(self, sql: Any, param_list: Any) -> Any:
        if classify(sql).kind is Kind.OTHER:
            self.db.reads.session_changed = True
        return super().executemany(sql, param_list)

    def callproc(self, procname: Any, params: Any = None, kparams: Any = None) -> Any:
        self.db.reads.session_changed = True  # a procedure may do anything to the session
        return super().callproc(procname, params, kparams)


class ReadRetryCursorWrapper(ReadRetryMixin):
    pass


class ReadRetryCursorDebugWrapper(ReadRetryMixin, CursorDebugWrapper):
    pass
