"""The signals fire with the documented arguments during a real failover."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from django.db import OperationalError, connections

from django_pg_failover import signals
from django_pg_failover.base import DatabaseWrapper
from django_pg_failover.lab import Cluster
from shop.models import Order

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def received() -> Iterator[dict[str, list[dict]]]:
    seen: dict[str, list[dict]] = {
        "host_attempt_failed": [],
        "connection_established": [],
        "connection_lost": [],
    }
    receivers = {}
    for name, calls in seen.items():

        def receiver(sender, calls=calls, **kwargs) -> None:
            calls.append({"sender": sender, **kwargs})

        receivers[name] = receiver
        getattr(signals, name).connect(receiver)
    yield seen
    for name, receiver in receivers.items():
        getattr(signals, name).disconnect(receiver)


def test_signals_during_crash_and_promotion(cluster: Cluster, make_alias, received) -> None:
    alias = make_alias(OPTIONS={"failover": {"retry_timeout": 10, "backoff_max": 0.2}})
    old = cluster.primary
    Order.objects.using(alias).create(key="signals-1")
    (first,) = received["connection_established"]
    assert first == {
        "sender": DatabaseWrapper,
        "signal": signals.connection_established,
        "alias": alias,
        "host": "127.0.0.1",
        "port": old.port,
        "role": "primary",
        "attempts": 1,
        "elapsed": first["elapsed"],
    }
    assert 0 < first["elapsed"] < 5

    cluster.crash(old)
    with pytest.raises(OperationalError):
        Order.objects.using(alias).create(key="signals-lost")
    (lost,) = received["connection_lost"]
    assert lost["alias"] == alias
    assert (lost["host"], lost["port"]) == ("127.0.0.1", old.port)
    assert lost["in_atomic_block"] is False
    assert lost["error"].__class__.__name__ == "OperationalError"
    assert connections[alias].connection is None

    promoter = threading.Timer(1.0, cluster.promote)
    promoter.start()
    Order.objects.using(alias).create(key="signals-2")
    promoter.join()
    new = cluster.primary

    failed = received["host_attempt_failed"]
    reasons = {(f["port"], f["reason"]) for f in failed}
    assert (old.port, "Connection refused") in reasons
    assert (new.port, "session is read-only") in reasons  # before its promotion
    # One pass over the hosts; then the process's watcher looked for the new primary.
    assert {f["attempt"] for f in failed} == {1}
    assert all(f["alias"] == alias and f["host"] == "127.0.0.1" for f in failed)

    second = received["connection_established"][-1]
    assert (second["port"], second["role"]) == (new.port, "primary")
    assert second["attempts"] == 2
    assert second["elapsed"] >= 0.5
