"""What this process last learned about each server, to order the next connections.

Like pgjdbc's ``hostRecheckSeconds``, the backend remembers for a while which
hosts did not answer and which role the others had, and tries the promising
ones first. A remembered host is never dropped: when every host looks bad, all
are still tried.

Only evidence about a server changes its record: it did not answer, it said
it cannot take connections now, it answered with a role, a session on it was
lost or found read-only. A refusal of one alias's credentials (wrong
password, no ``pg_hba.conf`` line for that user) says nothing about the server
and is not recorded: another alias of the same process may be welcome there.

The memory is shared by every thread of the process and survives ``fork()``
(gunicorn ``--preload``): the child starts with a fresh lock.
"""

from __future__ import annotations

import enum
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .hosts import Host
from .targets import Role, suits


class HostState(enum.Enum):
    PRIMARY = "primary"
    READ_ONLY_PRIMARY = "read-only primary"
    STANDBY = "standby"
    #: Did not answer, could not take connections, or lost an open session.
    DOWN = "down"

    @classmethod
    def of(cls, role: Role) -> HostState:
        return cls(role.value)

    @property
    def role(self) -> Role | None:
        return None if self is HostState.DOWN else Role(self.value)


@dataclass(frozen=True)
class HostRecord:
    state: HostState
    seen_at: float
    expires_at: float


def rank(record: HostRecord | None, target_session_attrs: str) -> int:
    """0: a candidate (unknown, or of a role that suits); 1: wrong role; 2: down.

    Known-good and unknown hosts rank alike (as in pgjdbc): the listed order,
    or the load-balancing shuffle, decides among candidates.
    """
    if record is None:
        return 0
    role = record.state.role
    if role is None:
        return 2
    return 0 if suits(role, target_session_attrs) else 1


class HostStatus:
    """Thread-safe, fork-safe, process-wide memory of host outcomes."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[Host, HostRecord] = {}

    def after_fork_in_child(self) -> None:
        # The parent's lock may have been held by a thread that does not exist here.
        self._lock = threading.Lock()

    def snapshot(self) -> dict[Host, HostRecord]:
        """The records that have not expired."""
        now = self._clock()
        with self._lock:
            return {h: r for h, r in self._records.items() if r.expires_at > now}

    def state(self, host: Host) -> HostState | None:
        record = self.snapshot().get(host)
        return record.state if record else None

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def order(
        self, hosts: Sequence[Host], target_session_attrs: str, shuffle: bool = False
    ) -> tuple[Host, ...]:
        """Candidates first, wrong role next, down last; ``shuffle`` within each rank."""
        candidates = list(hosts)
        if shuffle:
            random.shuffle(candidates)
        if not self._records:  # the healthy steady state of a new process
            return tuple(candidates)
        known = self.snapshot()
        return tuple(sorted(candidates, key=lambda h: rank(known.get(h), target_session_attrs)))

    def record(self, host: Host, state: HostState, recheck: float) -> None:
        """What a connection to ``host`` found, remembered ``recheck`` seconds."""
        if recheck <= 0:
            return
        now = self._clock()
        with self._lock:
            self._records[host] = HostRecord(state, now, now + recheck)

    def record_role(self, host: Host, role: Role, recheck: float) -> None:
        self.record(host, HostState.of(role), recheck)

    def record_down(self, host: Host, recheck: float) -> None:
        self.record(host, HostState.DOWN, recheck)


#: The process-wide memory every connection shares.
host_status = HostStatus()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=host_status.after_fork_in_child)
