"""How failovers are counted (django_pg_failover.metrics): outages per alias, no server needed.

The events are the functions the backend calls; the SDK's in-memory reader
(tests/backend/otel.py) reads what they recorded. The pool's instruments are
compared with OpenTelemetry's own constants for the semantic conventions.
"""

from __future__ import annotations

import itertools

import pytest

from django_pg_failover import metrics
from django_pg_failover.settings.hosts import Host
from tests.backend import otel

OLD, NEW = Host("127.0.0.1", 5432), Host("127.0.0.1", 5433)
FAILOVERS = "django_pg_failover.failovers"
_aliases = itertools.count()


@pytest.fixture
def alias() -> str:
    otel.reader()
    metrics.forget_outages()
    return f"unit_outage_{next(_aliases)}"


def failovers(alias: str) -> float:
    return otel.total(otel.points(alias), FAILOVERS)


def test_a_loss_then_another_server_is_one_failover(alias: str) -> None:
    metrics.connection_lost(alias, OLD, "crash")
    metrics.no_server(alias)  # the passes while no primary answers: the same outage
    metrics.connection_lost(alias, OLD, "crash")  # another thread's connection
    metrics.connected(alias, NEW)
    metrics.connected(alias, NEW)  # the other threads' connects: the outage is over
    assert failovers(alias) == 1
    (duration,) = otel.points(alias)["django_pg_failover.failover.duration"]
    assert duration.count == 1
    assert duration.sum > 0


def test_the_left_server_s_other_connections_start_no_outage(alias: str) -> None:
    metrics.connection_lost(alias, OLD, "crash")
    metrics.connected(alias, NEW)
    metrics.connection_lost(alias, OLD, "closed_while_idle")  # found later, when used
    metrics.connected(alias, NEW)
    assert failovers(alias) == 1
    # Back to the old server, and a loss there: a failover again.
    metrics.connection_lost(alias, NEW, "demoted")
    metrics.connected(alias, OLD)
    assert failovers(alias) == 2


def test_a_reconnect_to_the_same_server_is_no_failover(alias: str) -> None:
    metrics.connection_lost(alias, OLD, "closed_while_idle")  # a terminated session
    metrics.connected(alias, OLD)
    assert failovers(alias) == 0
    assert otel.total(otel.points(alias), "django_pg_failover.connections.lost") == 1


def test_no_server_at_first_then_one_is_a_failover(alias: str) -> None:
    metrics.no_server(alias)
    metrics.connected(alias, OLD)
    assert failovers(alias) == 1


def test_aliases_are_counted_apart(alias: str) -> None:
    other = alias + "_other"
    metrics.connection_lost(alias, OLD, "crash")
    metrics.connected(other, NEW)
    assert failovers(other) == 0
    metrics.connected(alias, NEW)
    assert failovers(alias) == 1


def test_the_pool_instruments_are_the_semantic_conventions(alias: str) -> None:
    """Names, kinds (an observable instrument for a synchronous one) and units."""
    conventions = pytest.importorskip("opentelemetry.semconv._incubating.metrics.db_metrics")
    recorder = metrics.recorder()
    assert recorder is not None
    expected: dict[str, tuple[str, str]] = {}

    class Spy:  # a meter that notes what the conventions' helpers create
        def __getattr__(self, kind: str):
            def make(name: str, **kwargs):
                expected[name] = (kind, kwargs.get("unit", ""))

            return make

    for helper in (
        "count",
        "max",
        "idle_max",
        "idle_min",
        "pending_requests",
        "timeouts",
        "create_time",
        "wait_time",
        "use_time",
    ):
        getattr(conventions, f"create_db_client_connection_{helper}")(Spy())
    assert len(expected) == 9
    assert {name: recorder.instruments.get(name) for name in expected} == expected
