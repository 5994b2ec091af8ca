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

A role the server reports is evidence, not proof: a pooler (PgBouncer,
pgcat, Odyssey, RDS Proxy) replays to its clients what its first server
connection reported, or reports nothing of its own. A host whose report was
contradicted (asked with a query, the server gave another role) is marked
*distrusted*: from then on, for the life of the process, its role is asked
with a query at every connect (:mod:`.attempt`). That mark never expires:
what made the report stale (a pooler in the way) does not go away with time,
and the price of keeping it is one round trip per connection to that host.

The memory is shared by every thread of the process and survives ``fork()``
(gunicorn ``--preload``): the child starts with a fresh lock.
"""

from __future__ import annotations

import enum
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django_pg_failover.connecting.roles import Role, suits
from django_pg_failover.settings.hosts import Host


class HostState(enum.Enum):
    PRIMARY = "primary"
    READ_ONLY_PRIMARY = "read-only primary"
    STANDBY = "standby"
    #: Did not answer, could not take connections, or lost an open session.
    DOWN = "down"

    @classmethod
    def of(cls, role: Role) -> HostState:
        return _STATE_OF_ROLE[role._value_]  # (an enum member's hash runs in Python)

    @property
    def role(self) -> Role | None:
        return _ROLE_OF_STATE[self]


_STATE_OF_ROLE = {role.value: HostState(role.value) for role in Role}
_ROLE_OF_STATE = {
    state: None if state is HostState.DOWN else Role(state.value) for state in HostState
}


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
        #: Changes each time a host's state changes: orders computed before are stale.
        self._version = 0
        #: The last order of each host list and target: (version, valid until, order).
        self._orders: dict[tuple[tuple[Host, ...], str], tuple[int, float, tuple[Host, ...]]] = {}
        #: Hosts whose reported role was contradicted: asked by query from now on.
        #: Read without the lock on every connect (a set's membership test is atomic).
        self.distrusted: set[Host] = set()

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
            self.distrusted = set()
            self._version += 1

    def distrust_reports(self, host: Host) -> bool:
        """``host`` reported a role its server contradicted when asked: ask it from now
        on. True the first time (the caller logs it once)."""
        with self._lock:
            if host in self.distrusted:
                return False
            self.distrusted = self.distrusted | {host}  # replaced: readers take no lock
            return True

    def suits(self, host: Host, target_session_attrs: str) -> bool:
        """Whether ``host`` answered lately with a role that suits (no lock: read per connect)."""
        record = self._records.get(host)
        if record is None or record.expires_at <= self._clock():
            return False
        role = record.state.role
        return role is not None and suits(role, target_session_attrs)

    def order(
        self, hosts: Sequence[Host], target_session_attrs: str, shuffle: bool = False
    ) -> tuple[Host, ...]:
        """Candidates first, wrong role next, down last; ``shuffle`` within each rank.

        Without ``shuffle`` the order is kept until a host's state changes or a
        record it rests on expires: a connect on the healthy path sorts nothing.
        """
        hosts = tuple(hosts)  # the same object when it is one already
        if not self._records:  # the healthy steady state of a new process
            return tuple(random.sample(hosts, len(hosts))) if shuffle else hosts
        key = (hosts, target_session_attrs)
        if not shuffle:
            cached = self._orders.get(key)
            if cached is not None and cached[0] == self._version and self._clock() < cached[1]:
                return cached[2]
        version = self._version
        known = self.snapshot()
        candidates = list(hosts)
        if shuffle:
            random.shuffle(candidates)
        ordered = tuple(sorted(candidates, key=lambda h: rank(known.get(h), target_session_attrs)))
        if not shuffle:
            valid_until = min((known[h].expires_at for h in hosts if h in known), default=math.inf)
            self._orders[key] = (version, valid_until, ordered)
        return ordered

    def record(self, host: Host, state: HostState, recheck: float) -> None:
        """What a connection to ``host`` found, remembered ``recheck`` seconds."""
        if recheck <= 0:
            return
        now = self._clock()
        with self._lock:
            old = self._records.get(host)
            self._records[host] = HostRecord(state, now, now + recheck)
            if old is None or old.state is not state or old.expires_at <= now:
                self._version += 1

    def record_role(self, host: Host, role: Role, recheck: float) -> None:
        self.record(host, HostState.of(role), recheck)

    def record_down(self, host: Host, recheck: float) -> None:
        self.record(host, HostState.DOWN, recheck)


#: The process-wide memory every connection shares.
host_status = HostStatus()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=host_status.after_fork_in_child)
