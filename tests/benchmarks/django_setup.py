"""Django settings for the benchmark: the same lab behind both backends, side by side."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from django_pg_failover.lab import Cluster

TESTPROJECT = Path(__file__).resolve().parents[2] / "testproject"
CONNECT_TIMEOUT = 2


def ours(cluster: Cluster, nodes: list | None = None) -> dict[str, Any]:
    """django_pg_failover with its defaults (only connect_timeout set, as for stock)."""
    return cluster.django_database(nodes=nodes, OPTIONS={"connect_timeout": CONNECT_TIMEOUT})


def stock(cluster: Cluster, nodes: list | None = None) -> dict[str, Any]:
    """Django's backend as psycopg2 multi-host guides set it up: its best case."""
    return cluster.django_database(
        stock=True, nodes=nodes, OPTIONS={"connect_timeout": CONNECT_TIMEOUT}
    )


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


def set_alias(alias: str, database: dict[str, Any]) -> None:
    """Point an alias at new settings (closing this thread's connection)."""
    from django.db import connections

    connections[alias].close()
    connections.settings[alias] = connections.configure_settings({"default": {}, alias: database})[
        alias
    ]
    del connections[alias]
