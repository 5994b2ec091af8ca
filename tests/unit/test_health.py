"""The health verdict on a ``pg_hosts --json`` report: pure logic, no server."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_pg_failover.health import check_limits, problem


def host(port: int, role: str | None, **fields: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": port,
        "reachable": role is not None,
        "role": role,
        "read_only": role == "standby",
        "error": None if role else "Connection refused",
        "replay_lag_bytes": None,
        "replay_lag_seconds": None,
        "would_connect": False,
        **fields,
    }


def report(target: str, *hosts: dict[str, Any]) -> dict[str, Any]:
    return {"target_session_attrs": target, "hosts": list(hosts)}


def test_healthy_when_a_host_would_be_connected_to() -> None:
    assert problem(report("read-write", host(1, "primary", would_connect=True))) is None


def test_no_suitable_host_names_each_host_and_why() -> None:
    found = problem(
        report(
            "read-write",
            host(1, None),
            host(2, "primary", read_only=True),
            host(3, "standby"),
        )
    )
    assert found == (
        "no host suits target_session_attrs=read-write (127.0.0.1:1 Connection refused; "
        "127.0.0.1:2 primary (read-only); 127.0.0.1:3 standby)"
    )


def standby(lag_bytes: int | None, lag_seconds: float | None) -> dict[str, Any]:
    return report(
        "standby",
        host(
            2,
            "standby",
            would_connect=True,
            replay_lag_bytes=lag_bytes,
            replay_lag_seconds=lag_seconds,
        ),
    )


def test_a_standby_behind_max_lag_seconds_with_wal_to_replay() -> None:
    assert problem(standby(8192, 31.0), max_lag_seconds=30) == (
        "127.0.0.1:2 is a standby 31.0s behind (max_lag_seconds=30, 8192 bytes to replay)"
    )
    assert problem(standby(8192, 29.0), max_lag_seconds=30) is None
    assert problem(standby(8192, 31.0)) is None  # no limit set


def test_a_caught_up_standby_is_not_lagging_however_old_its_last_commit() -> None:
    # The primary commits nothing: the seconds grow, nothing is left to replay.
    assert problem(standby(0, 600.0), max_lag_seconds=30) is None


def test_without_a_primary_the_seconds_alone_count() -> None:
    assert problem(standby(None, 31.0), max_lag_seconds=30) == (
        "127.0.0.1:2 is a standby 31.0s behind (max_lag_seconds=30, no primary to measure from)"
    )
    assert problem(standby(None, None), max_lag_seconds=30) is None  # replayed no commit yet


def test_lag_does_not_apply_to_a_primary() -> None:
    found = report(
        "prefer-standby",
        host(1, "primary", would_connect=True, replay_lag_seconds=None),
    )
    assert problem(found, max_lag_seconds=0) is None


@pytest.mark.parametrize("timeout", [0, -1, 1.5, "2", True, None])
def test_timeout_must_be_whole_seconds(timeout: Any) -> None:
    with pytest.raises(ImproperlyConfigured, match="timeout must be a whole number of seconds"):
        check_limits(timeout, None)


@pytest.mark.parametrize("max_lag", [-1, "30", True])
def test_max_lag_seconds_must_be_a_number(max_lag: Any) -> None:
    with pytest.raises(ImproperlyConfigured, match="max_lag_seconds must be a number"):
        check_limits(2, max_lag)
    check_limits(1, 0.5)
    check_limits(1, None)
