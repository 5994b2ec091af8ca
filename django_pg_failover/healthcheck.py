"""A django-health-check check for an alias of this backend: ``FailoverDatabase``.

django-health-check 4 (``pip install django-pg-failover[health]``; it needs
Django 5.2+) runs the checks a ``HealthCheckView`` lists, each with its
options; this one is listed once per alias, like its own ``Database``::

    from django.urls import path
    from health_check.views import HealthCheckView

    from django_pg_failover.healthcheck import failover_checks

    urlpatterns = [
        path("ht/", HealthCheckView.as_view(checks=[*failover_checks(), "health_check.Cache"])),
    ]

It judges what :mod:`django_pg_failover.health` judges (a host that suits the
alias's ``target_session_attrs``, a standby's lag with ``max_lag_seconds``),
on its own short connections: django-health-check runs a synchronous check
on an executor's long-lived threads, where Django never recycles the thread's
connection, and its ``Database`` check, reusing that connection, reports a
healthy database down once the server it was opened to has gone (its issue
#755). The failure message names each host and why it does not suit.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from django.db import connections
from health_check.base import HealthCheck
from health_check.exceptions import ServiceUnavailable

from django_pg_failover import ENGINE
from django_pg_failover.health import alias_health
from django_pg_failover.management.commands.pg_hosts import QUERY_GRACE


@dataclasses.dataclass
class FailoverDatabase(HealthCheck):
    """The alias has a server that suits it (and, with ``max_lag_seconds``, not far behind).

    ``timeout`` is django-health-check's budget for the whole check: each host
    gets ``timeout`` less a second for its queries as libpq's
    ``connect_timeout`` (at least 1 s), so the check answers before the budget
    is spent.
    """

    alias: str = "default"
    max_lag_seconds: float | None = None
    timeout: datetime.timedelta = dataclasses.field(
        default=datetime.timedelta(seconds=3), repr=False
    )

    def run(self) -> None:
        connect_timeout = max(int(self.timeout.total_seconds() - QUERY_GRACE), 1)
        verdict = alias_health(self.alias, connect_timeout, self.max_lag_seconds)
        if not verdict.healthy:
            raise ServiceUnavailable(verdict.problem)


def failover_checks(**options: Any) -> list[tuple[type[FailoverDatabase], dict[str, Any]]]:
    """One :class:`FailoverDatabase` per alias of ``ENGINE = "django_pg_failover"``, in
    ``DATABASES`` order, each with ``options`` (``max_lag_seconds``, ``timeout``)."""
    return [
        (FailoverDatabase, {"alias": alias, **options})
        for alias, database in connections.settings.items()
        if database["ENGINE"] == ENGINE
    ]
