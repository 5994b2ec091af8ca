"""What ``manage.py pg_hosts`` learns from each host, and what it concludes.

Pure functions: the command connects and queries; everything it decides from
the answers (which host the alias would reach, replay lag in bytes, the
reason a host failed) is here, where it needs no server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .hosts import Host

PRIMARY = "primary"
STANDBY = "standby"


@dataclass(frozen=True)
class HostProbe:
    """One host as a direct connection to it found it."""

    host: Host
    reachable: bool
    #: Why the probe failed (libpq's per-host reason); None when reachable.
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


def probe_params(conn_params: Mapping[str, Any], host: Host, timeout: int) -> dict[str, Any]:
    """The alias's connection parameters narrowed to one host, any role, ``timeout`` s.

    ``conn_params`` comes from the backend's ``get_connection_params()``, which
    already dropped the keys libpq does not know (``failover``, Django's own
    options) and the load balancing this backend does itself.
    """
    params = {key: value for key, value in conn_params.items() if key != "cursor_factory"}
    params.update(
        host=host.host,
        port=host.port,
        # The probe reports each host's role; the alias's choice is made from them.
        target_session_attrs="any",
        connect_timeout=timeout,
    )
    return params


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


def replay_lag_bytes(standby: HostProbe, primary: HostProbe | None) -> int | None:
    """How far the standby's replay is behind the primary's current WAL position."""
    if primary is None or standby.role != STANDBY or not (standby.wal_lsn and primary.wal_lsn):
        return None
    # The probes run concurrently: the standby may have replayed past the
    # position the primary reported a moment earlier.
    return max(parse_lsn(primary.wal_lsn) - parse_lsn(standby.wal_lsn), 0)


def first_primary(probes: Sequence[HostProbe]) -> HostProbe | None:
    """The primary that lag is measured against: the first reachable one listed."""
    return next((p for p in probes if p.reachable and p.role == PRIMARY), None)


def matches(probe: HostProbe, target_session_attrs: str) -> bool:
    """Whether libpq would accept this host for ``target_session_attrs``.

    libpq tests read-write and read-only on the session, primary and standby
    on the server's recovery state; prefer-standby is settled by
    :func:`would_connect`.
    """
    if not probe.reachable:
        return False
    if target_session_attrs == "read-write":
        return probe.read_only is False
    if target_session_attrs == "read-only":
        return probe.read_only is True
    if target_session_attrs == "primary":
        return probe.role == PRIMARY
    if target_session_attrs in ("standby", "prefer-standby"):
        return probe.role == STANDBY
    return True  # any


def would_connect(probes: Sequence[HostProbe], target_session_attrs: str) -> HostProbe | None:
    """The host libpq would land on, given the probes in the order libpq tries them."""
    chosen = next((p for p in probes if matches(p, target_session_attrs)), None)
    if chosen is None and target_session_attrs == "prefer-standby":
        # libpq's second pass: no standby answered, so any server will do.
        chosen = next((p for p in probes if p.reachable), None)
    return chosen
