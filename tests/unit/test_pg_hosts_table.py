"""The note ``pg_hosts`` writes under its table: pure logic, no server."""

from __future__ import annotations

from typing import Any

from django_pg_failover.management.commands.pg_hosts import idle_lag_note


def host(port: int, lag_bytes: int | None, lag_seconds: float | None) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": port,
        "replay_lag_bytes": lag_bytes,
        "replay_lag_seconds": lag_seconds,
    }


def test_names_only_standbys_with_nothing_left_to_replay_for_a_second_or_more() -> None:
    note = idle_lag_note(
        [
            host(5001, None, None),  # the primary
            host(5002, 0, 12.5),  # caught up, the primary idle
            host(5003, 8192, 12.5),  # behind: its seconds are lag
            host(5004, 0, 0.4),  # caught up, a commit moments ago
            host(5005, 0, None),  # never replayed a commit
        ]
    )
    assert note is not None
    assert "127.0.0.1:5002" in note
    for port in (5001, 5003, 5004, 5005):
        assert f"127.0.0.1:{port}" not in note


def test_no_note_when_no_standby_is_idle() -> None:
    assert idle_lag_note([host(5001, None, None), host(5002, 4096, 3.0)]) is None
