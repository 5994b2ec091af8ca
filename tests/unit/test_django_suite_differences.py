"""Tests of Django's own suite this backend once failed where Django's backend passed.

Found by the conformance run (``make conformance``, issue 13) and fixed; each
repeats, on this backend alone, what the test of Django 5.2's
``tests/backends/postgresql/tests.py`` named in its docstring checks, so that
``make test`` keeps them fixed.
"""

from __future__ import annotations

import copy

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from django_pg_failover.drivers import get_driver
from tests.markers import needs_pool


def pooled_copy(**settings):
    """Django's ``no_pool_connection(alias="default_pool")``, with a pool and ``settings``."""
    new_connection = connection.copy("default_pool")
    new_connection.settings_dict = copy.deepcopy(connection.settings_dict)
    new_connection.settings_dict["OPTIONS"]["pool"] = True
    new_connection.settings_dict.update(settings)
    return new_connection


@needs_pool
def test_pooling_health_checks() -> None:
    """Tests.test_pooling_health_checks: CONN_HEALTH_CHECKS gives the pool a check."""
    new_connection = pooled_copy(CONN_HEALTH_CHECKS=False)
    try:
        assert new_connection.pool._check is None
    finally:
        new_connection.close_pool()
    new_connection.settings_dict["CONN_HEALTH_CHECKS"] = True
    try:
        assert new_connection.pool._check is not None
    finally:
        new_connection.close_pool()


@needs_pool
def test_pooling_not_support_persistent_connections() -> None:
    """Tests.test_pooling_not_support_persistent_connections: Django's message."""
    new_connection = pooled_copy(CONN_MAX_AGE=10)
    with pytest.raises(ImproperlyConfigured) as raised:
        new_connection.pool  # noqa: B018
    assert "Pooling doesn't support persistent connections." in str(raised.value)


@pytest.mark.skipif(get_driver().name != "psycopg2", reason="psycopg2 specific test")
def test_connect_pool_setting_ignored_for_psycopg2() -> None:
    """Tests.test_connect_pool_setting_ignored_for_psycopg2: Django's message."""
    new_connection = connection.copy()
    new_connection.settings_dict = copy.deepcopy(connection.settings_dict)
    new_connection.settings_dict["OPTIONS"]["pool"] = True
    with pytest.raises(ImproperlyConfigured) as raised:
        new_connection.connect()
    assert "Database pooling requires psycopg >= 3" in str(raised.value)
