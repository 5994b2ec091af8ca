"""Markers for tests that can only run on one driver, saying why."""

from __future__ import annotations

import django
import pytest

from django_pg_failover.drivers import get_driver

needs_pool = pytest.mark.skipif(
    get_driver().name != "psycopg" or django.VERSION < (5, 1),
    reason="Django's connection pool needs psycopg 3 and Django 5.1+",
)
