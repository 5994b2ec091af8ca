"""When a reported role is believed: a report the server contradicts distrusts its host."""

from __future__ import annotations

from typing import Any

import pytest

from django_pg_failover.connecting.memory import host_status
from django_pg_failover.connecting.roles import Role
from django_pg_failover.connecting.trust import must_ask, pooler_error, verified_role
from django_pg_failover.settings.hosts import Host

from .test_search import HeldConnection as FakeConnection

HOST = Host("pooler", 6432)


def held(role: Role) -> FakeConnection:
    """A connection in autocommit that answers the role query as ``role``."""
    connection = FakeConnection(role)
    connection.autocommit = True
    return connection


class Reports:
    """A driver's view of what a connection's server reported (a pooler's replay)."""

    def __init__(self, reported: Role | None, sqlstate: str | None = None) -> None:
        self.reported = reported
        self.error_state = sqlstate

    def parameter_status(self, connection: Any, name: str) -> str | None:
        if self.reported is None:
            return None
        if name == "in_hot_standby":
            return "on" if self.reported is Role.STANDBY else "off"
        return "on" if self.reported.read_only else "off"

    def sqlstate(self, exc: BaseException | None) -> str | None:
        return self.error_state


@pytest.fixture(autouse=True)
def fresh_memory():
    host_status.clear()
    yield
    host_status.clear()


def test_a_report_the_server_confirms_is_believed_again() -> None:
    role = verified_role(Reports(Role.PRIMARY), held(Role.PRIMARY), HOST)  # type: ignore[arg-type]
    assert role is Role.PRIMARY
    assert not must_ask(HOST, "reported")
    assert must_ask(HOST, "query")


@pytest.mark.parametrize(
    ("reported", "asked"),
    [
        (Role.PRIMARY, Role.STANDBY),
        (Role.STANDBY, Role.PRIMARY),
        (Role.PRIMARY, Role.READ_ONLY_PRIMARY),
    ],
)
def test_a_contradicted_report_makes_the_host_asked_from_then_on(
    reported: Role, asked: Role, caplog
) -> None:
    role = verified_role(Reports(reported), held(asked), HOST)  # type: ignore[arg-type]
    assert role is asked
    assert must_ask(HOST, "reported")
    verified_role(Reports(reported), held(asked), HOST)  # type: ignore[arg-type]
    warnings = [r for r in caplog.records if "asked with a query from now on" in r.getMessage()]
    assert len(warnings) == 1  # once per host


def test_no_report_is_no_contradiction() -> None:
    verified_role(Reports(None), held(Role.STANDBY), HOST)  # type: ignore[arg-type]
    assert not must_ask(HOST, "reported")


@pytest.mark.parametrize(
    ("sqlstate", "distrusted"), [("08P01", True), ("08006", False), (None, False)]
)
def test_a_poolers_own_error_distrusts_the_host(sqlstate: str | None, distrusted: bool) -> None:
    pooler_error(Reports(Role.PRIMARY, sqlstate), Exception("server login has been failing"), HOST)  # type: ignore[arg-type]
    assert must_ask(HOST, "reported") is distrusted
