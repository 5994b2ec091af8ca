"""The cursors of the two ends of ``read_your_writes``.

- On a primary alias that a replica alias names, every statement marks the
  thread's scope as having written through it (a set's ``add``: nothing is
  asked of the server). Marking every statement, reads included, is what
  costs least per statement: telling a read from a write would cost more
  than the rare position it saves. Commits of transactions are marked by the
  wrapper (``DatabaseWrapper._commit``).
- On the replica alias, a statement whose scope has a position for its
  primary alias first asks :mod:`.routing` where it may run; a cursor of the
  primary alias's connection then runs this statement (and serves its
  fetches), and the alias's own cursor is put back at the next statement or
  at ``close()``. The statement runs through the primary alias's own
  wrapper: an error, a lost connection or a stall there is the primary
  alias's (its host marked, its connection closed, its loss announced),
  never charged to the replica alias and its standby.

Aliases without the feature keep the cursor classes they had: not one call is
added to their queries.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from django.db.backends.utils import CursorDebugWrapper, CursorWrapper

from django_pg_failover.causal import routing
from django_pg_failover.causal.scope import _local
from django_pg_failover.reads.retry import ReadRetryMixin


class CausalWriteMixin(CursorWrapper):
    def _execute_with_wrappers(self, sql: Any, params: Any, many: bool, executor: Any) -> Any:
        _local.scope.written.add(self.db.alias)
        return super()._execute_with_wrappers(sql, params, many, executor)

    def callproc(self, procname: Any, params: Any = None, kparams: Any = None) -> Any:
        _local.scope.written.add(self.db.alias)
        return super().callproc(procname, params, kparams)


class CausalReadMixin(CursorWrapper):
    cursor: Any  # Django's attribute, untyped there
    #: The primary alias's cursor (a Django cursor of its wrapper) running this statement.
    _stand_in: Any = None
    #: The alias's own driver cursor while the stand-in serves the fetches.
    _own: Any = None

    def _execute_with_wrappers(self, sql: Any, params: Any, many: bool, executor: Any) -> Any:
        if self._stand_in is not None:
            self._put_back()
        scope = _local.scope
        target = self.db.causal_target
        if target is not None and (target in scope.written or target in scope.positions):
            stand_in = routing.read_elsewhere(self.db, scope)
            if stand_in is not None:
                self._stand_in, self._own, self.cursor = stand_in, self.cursor, stand_in.cursor
                return stand_in.executemany(sql, params) if many else stand_in.execute(sql, params)
        return super()._execute_with_wrappers(sql, params, many, executor)

    def _put_back(self) -> None:
        stand_in, own = self._stand_in, self._own
        self._stand_in = self._own = None
        if self.cursor is stand_in.cursor:  # not replaced meanwhile (a re-run's new cursor)
            self.cursor = own
        with suppress(Exception):
            stand_in.close()

    def close(self) -> Any:
        if self._stand_in is not None:
            self._put_back()
        return self.cursor.close()


class WriteCursor(CausalWriteMixin, CursorWrapper):
    pass


class WriteDebugCursor(CausalWriteMixin, CursorDebugWrapper):
    pass


class WriteRetryCursor(CausalWriteMixin, ReadRetryMixin):
    pass


class WriteRetryDebugCursor(CausalWriteMixin, ReadRetryMixin, CursorDebugWrapper):
    pass


class ReadCursor(CausalReadMixin, CursorWrapper):
    pass


class ReadDebugCursor(CausalReadMixin, CursorDebugWrapper):
    pass


class ReadRetryCursor(CausalReadMixin, ReadRetryMixin):
    pass


class ReadRetryDebugCursor(CausalReadMixin, ReadRetryMixin, CursorDebugWrapper):
    pass


#: (role, retry_reads, debug) -> the cursor class.
CURSORS: dict[tuple[str, bool, bool], type[CursorWrapper]] = {
    ("write", False, False): WriteCursor,
    ("write", False, True): WriteDebugCursor,
    ("write", True, False): WriteRetryCursor,
    ("write", True, True): WriteRetryDebugCursor,
    ("read", False, False): ReadCursor,
    ("read", False, True): ReadDebugCursor,
    ("read", True, False): ReadRetryCursor,
    ("read", True, True): ReadRetryDebugCursor,
}
