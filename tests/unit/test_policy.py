"""The failover policy: validation and the backoff schedule (pure logic)."""

from __future__ import annotations

import math

import pytest
from django.core.exceptions import ImproperlyConfigured
from hypothesis import given
from hypothesis import strategies as st

from django_pg_failover.settings.policy import FailoverPolicy


def test_defaults() -> None:
    policy = FailoverPolicy.from_options(None)
    assert policy == FailoverPolicy(
        retry_timeout=10.0, backoff_initial=0.05, backoff_max=1.0, host_recheck=10.0
    )
    assert policy.retry_reads is False
    assert policy.role_check == "reported"


@pytest.mark.parametrize("role_check", ["reported", "query"])
def test_role_check_values(role_check: str) -> None:
    assert FailoverPolicy.from_options({"role_check": role_check}).role_check == role_check


def test_backoff_doubles_up_to_the_cap() -> None:
    policy = FailoverPolicy(backoff_initial=0.1, backoff_max=1.0)
    top = [policy.backoff(n, jitter=lambda: 1.0) for n in range(1, 7)]
    assert top == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    bottom = [policy.backoff(n, jitter=lambda: 0.0) for n in range(1, 7)]
    assert bottom == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5])


@given(st.integers(min_value=1, max_value=10**9), st.floats(min_value=0, max_value=0.999999))
def test_backoff_stays_within_half_and_full_ceiling(attempt, jitter) -> None:
    policy = FailoverPolicy(backoff_initial=0.05, backoff_max=2.0)
    delay = policy.backoff(attempt, jitter=lambda: jitter)
    ceiling = min(2.0, 0.05 * 2 ** min(attempt - 1, 32))
    assert ceiling / 2 <= delay <= ceiling
    assert math.isfinite(delay)


def test_policy_is_immutable() -> None:
    policy = FailoverPolicy()
    with pytest.raises(AttributeError):
        policy.retry_timeout = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retry_timout": 5}, "unknown setting(s) retry_timout"),
        ({"retry_timeout": -1}, "-1 must be a finite, non-negative number"),
        ({"retry_timeout": float("nan")}, "must be a finite"),
        ({"retry_timeout": float("inf")}, "must be a finite"),
        ({"retry_timeout": "10"}, "'10' is not a number of seconds"),
        ({"retry_timeout": True}, "True is not a number of seconds"),
        ({"retry_timeout": 36000}, "36000 is outside 0..3600 seconds"),
        ({"backoff_initial": 0}, "0 is outside 0.001..60 seconds"),
        ({"backoff_max": -0.5}, "-0.5 must be a finite"),
        ({"backoff_initial": 2, "backoff_max": 1}, "backoff_initial (2) is larger than"),
        ({"host_recheck": -3}, "-3 must be a finite"),
        ({"retry_reads": "yes"}, "'yes' is not True or False"),
        ({"role_check": "queries"}, "['role_check']: 'queries' is not one of 'reported', 'query'"),
        ({"role_check": True}, "['role_check']: True is not one of"),
        ({"role_check": None}, "['role_check']: None is not one of"),
        (["retry_timeout"], "is not a dict of failover settings"),
    ],
)
def test_bad_failover_settings(options, message) -> None:
    with pytest.raises(ImproperlyConfigured) as excinfo:
        FailoverPolicy.from_options(options, "default")
    assert str(excinfo.value).startswith("DATABASES['default']['OPTIONS']['failover']")
    assert message in str(excinfo.value)
