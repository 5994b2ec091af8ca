"""The failover picture's counting: pure, no server, no matplotlib."""

from __future__ import annotations

import pytest

from django_pg_failover.lab.picture import per_bucket


def test_requests_fall_in_their_100_ms() -> None:
    ok, failed = per_bucket([(0.0, True), (0.05, True), (0.1, False), (0.25, True)], until=0.3)
    assert ok == [2, 0, 1]
    assert failed == [0, 1, 0]


def test_requests_after_the_end_are_dropped() -> None:
    ok, failed = per_bucket([(0.15, True), (0.4, True), (-0.01, False)], until=0.2)
    assert (ok, failed) == ([0, 1], [0, 0])


@pytest.mark.parametrize(("until", "buckets"), [(0.0, 1), (0.1, 1), (0.11, 2), (12.0, 120)])
def test_the_axis_covers_the_run(until: float, buckets: int) -> None:
    assert len(per_bucket([], until)[0]) == buckets
