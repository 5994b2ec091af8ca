"""What this process last learned about each host, to order the next connections.

libpq tries hosts in the order given, so a hung first host costs every new
connection ``connect_timeout``. Like pgjdbc's ``hostRecheckSeconds``, we
remember for a while which hosts failed and which role the others had, and
list the promising ones first. A remembered host is never dropped: when every
host looks bad, all are still tried.
"""

from __future__ import annotations

import enum
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .errors import HostFailure
from .hosts import Host


class HostState(enum.Enum):
    PRIMARY = "primary"
    STANDBY = "standby"
    #: libpq moved past it while looking for ``target_session_attrs``: down, or
    #: of the wrong role; the connection that skipped it could not tell which.
    SKIPPED = "skipped"
    #: Refused, timed out, or lost under an open session.
    DOWN = "down"


@dataclass(frozen=True)
class HostRecord:
    state: HostState
    seen_at: float
    expires_at: float
    #: For SKIPPED: the target_session_attrs the host did not satisfy.
    target_session_attrs: str | None = None


# libpq's per-host reasons that name a role rather than a failure.
_ROLE_REASONS = {
    "session is read-only": HostState.STANDBY,
    "server is in hot standby mode": HostState.STANDBY,
    "session is not read-only": HostState.PRIMARY,
    "server is not in hot standby mode": HostState.PRIMARY,
}

_WANTS_PRIMARY = frozenset({"read-write", "primary"})
_WANTS_STANDBY = frozenset({"read-only", "standby", "prefer-standby"})


def _rank(record: HostRecord | None, target_session_attrs: str) -> int:
    """0: a candidate (unknown, or known to have the wanted role); 1: wrong role; 2: down.

    Known-good and unknown hosts rank alike (as in pgjdbc): the listed order,
    or the load-balancing shuffle, decides among candidates.
    """
    if record is None:
        return 0
    state = record.state
    if state is HostState.DOWN:
        return 2
    if state is HostState.SKIPPED:
        return 1 if record.target_session_attrs == target_session_attrs else 0
    if target_session_attrs in _WANTS_PRIMARY:
        return 0 if state is HostState.PRIMARY else 1
    if target_session_attrs in _WANTS_STANDBY:
        return 0 if state is HostState.STANDBY else 1
    return 0


class HostStatus:
    """Thread-safe, process-wide memory of host outcomes, each kept ``recheck`` seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[Host, HostRecord] = {}

    def snapshot(self) -> dict[Host, HostRecord]:
        """The records that have not expired."""
        now = self._clock()
        with self._lock:
            return {h: r for h, r in self._records.items() if r.expires_at > now}

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def order(
        self,
        hosts: Sequence[Host],
        target_session_attrs: str,
        shuffle: bool = False,
    ) -> tuple[Host, ...]:
        """Candidates (unknown or of the wanted role) first, wrong role next, down last.

        ``shuffle`` (``load_balance_hosts=random``) spreads connections over
        hosts of equal standing.
        """
        candidates = list(hosts)
        if shuffle:
            random.shuffle(candidates)
        if not self._records:  # the healthy steady state of a new process
            return tuple(candidates)
        known = self.snapshot()
        return tuple(sorted(candidates, key=lambda h: _rank(known.get(h), target_session_attrs)))

    def _set(self, host: Host, record: HostRecord) -> None:
        with self._lock:
            self._records[host] = record

    def _record(
        self,
        host: Host,
        state: HostState,
        recheck: float,
        target_session_attrs: str | None = None,
    ) -> None:
        if recheck <= 0:
            return
        now = self._clock()
        self._set(host, HostRecord(state, now, now + recheck, target_session_attrs))

    def record_connected(
        self,
        tried: Sequence[Host],
        landed: Host,
        role: str | None,
        target_session_attrs: str,
        recheck: float,
    ) -> None:
        """A connection reached ``landed``; the hosts listed before it were unusable."""
        if recheck <= 0:
            return
        known = self.snapshot()
        for host in tried:
            if host == landed:
                break
            # A host known to be down stays down: "skipped" would rank it higher.
            previous = known.get(host)
            if previous is None or previous.state is not HostState.DOWN:
                self._record(host, HostState.SKIPPED, recheck, target_session_attrs)
        if role is None and target_session_attrs in _WANTS_PRIMARY:
            role = "primary"
        if role is not None:
            self._record(landed, HostState(role), recheck)

    def record_failures(self, failures: Iterable[HostFailure], recheck: float) -> None:
        """Every host of a failed connection attempt, with libpq's reason."""
        for failure in failures:
            if failure.port is None:
                continue
            state = _ROLE_REASONS.get(failure.reason, HostState.DOWN)
            self._record(Host(failure.host, failure.port), state, recheck)

    def record_lost(self, host: Host, demoted: bool, recheck: float) -> None:
        """An open session failed: the server is gone, or no longer a primary."""
        self._record(host, HostState.STANDBY if demoted else HostState.DOWN, recheck)


#: The process-wide memory every connection shares.
host_status = HostStatus()
