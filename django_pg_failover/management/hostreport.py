"""What ``manage.py pg_hosts`` learns from each host, and what it concludes.

Pure functions: the command connects and queries; everything it decides from
the answers (which host the alias would reach, replay lag in bytes, the
reason a host failed) is here, where it needs no server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django_pg_failover.connecting.roles import accepts_fallback, role_from, suits
from django_pg_failover.settings.hosts import Host

PRIMARY = "primary"
STANDBY = "standby"


@dataclass(frozen=True)
class HostReport:
    """One host as a direct connection to it found it."""

    host: Host
    reachable: bool
    #: Why the look at the host failed (libpq's per-host reason); None when reachable.
    error: str | None = None
    role: str | None = None
    #: Whether new sessions there are read-only: what libpq's read-write and
    #: read-only check (true on standbys, and on a fenced primary).
    read_only: bool | None = None
    server_version: str | None = None
    #: pg_current_wal_lsn() on a primary, pg_last_wal_replay_lsn() on a standby.
    wal_lsn: str | None = None
    replay_lag_seconds: float | None = None
    rtt_ms: float | None = None


def format_server_version(number: int) -> str:
    """``150018`` as ``15.18``; before PostgreSQL 10, ``90624`` as ``9.6.24``."""
    major, rest = divmod(number, 10000)
    if major >= 10:
        return f"{major}.{rest}"
    return f"{major}.{rest // 100}.{rest % 100}"


def parse_lsn(text: str) -> int:
    """A ``pg_lsn`` such as ``16/B374D848`` as a byte position."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def replay_lag_bytes(standby: HostReport, primary: HostReport | None) -> int | None:
    """How far the standby's replay is behind the primary's current WAL position."""
    if primary is None or standby.role != STANDBY or not (standby.wal_lsn and primary.wal_lsn):
        return None
    # The hosts are looked at concurrently: the standby may have replayed past the
    # position the primary reported a moment earlier.
    return max(parse_lsn(primary.wal_lsn) - parse_lsn(standby.wal_lsn), 0)


def first_primary(reports: Sequence[HostReport]) -> HostReport | None:
    """The primary that lag is measured against: the first reachable one listed."""
    return next((r for r in reports if r.reachable and r.role == PRIMARY), None)


def matches(report: HostReport, target_session_attrs: str) -> bool:
    """Whether libpq would accept this host for ``target_session_attrs`` (the backend's
    one rule, :func:`~django_pg_failover.connecting.roles.suits`); prefer-standby's
    second pass is settled by :func:`would_connect`."""
    if not report.reachable or report.role is None:
        return False
    return suits(role_from(report.role == STANDBY, bool(report.read_only)), target_session_attrs)


def would_connect(reports: Sequence[HostReport], target_session_attrs: str) -> HostReport | None:
    """The host libpq would land on, given the reports in the order libpq tries them."""
    chosen = next((r for r in reports if matches(r, target_session_attrs)), None)
    if chosen is None and accepts_fallback(target_session_attrs):
        # libpq's second pass: no standby answered, so any server will do.
        chosen = next((r for r in reports if r.reachable), None)
    return chosen
