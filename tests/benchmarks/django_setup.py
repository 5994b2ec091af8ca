"""Django settings for the benchmark: the same lab behind both backends, side by side."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from django_pg_failover.lab import Cluster

TESTPROJECT = Path(__file__).resolve().parents[2] / "testproject"
CONNECT_TIMEOUT = 2
POOL = {"min_size": 4, "max_size": 8}


def ours(
    cluster: Cluster, nodes: list | None = None, pool: bool = False, **failover: Any
) -> dict[str, Any]:
    """django_pg_failover with its defaults (only connect_timeout set, as for stock)."""
    options: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT}
    if failover:
        options["failover"] = failover
    if pool:
        options["pool"] = dict(POOL)
    return cluster.django_database(nodes=nodes, OPTIONS=options)


def stock(cluster: Cluster, nodes: list | None = None, pool: bool = False) -> dict[str, Any]:
    """Django's backend as multi-host guides set it up: its best case."""
    options: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT}
    if pool:
        options["pool"] = dict(POOL)
    return cluster.django_database(stock=True, nodes=nodes, OPTIONS=options)


def configure(databases: dict[str, dict[str, Any]]) -> None:
    import django
    from django.conf import settings

    sys.path.insert(0, str(TESTPROJECT))
    settings.configure(
        DEBUG=False,
        USE_TZ=True,
        SECRET_KEY="benchmark",
        INSTALLED_APPS=["django.contrib.contenttypes", "django_pg_failover", "shop"],
        DATABASES={"default": databases["ours"], **databases},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        LOGGING_CONFIG=None,
    )
    django.setup()
    # The failover warnings would drown the report; the numbers tell the story.
    logging.getLogger("django_pg_failover").setLevel(logging.ERROR)
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)


def set_alias(alias: str, database: dict[str, Any]) -> None:
    """Point an alias at new settings (closing this thread's connection and its pool)."""
    from django.db import connections

    connections[alias].close()
    if hasattr(connections[alias], "close_pool"):
        connections[alias].close_pool()
    connections.settings[alias] = connections.configure_settings({"default": {}, alias: database})[
        alias
    ]
    del connections[alias]
