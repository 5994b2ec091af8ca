"""System checks: ``manage.py check`` reports bad settings before anything connects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from django_pg_failover import ENGINE
from django_pg_failover.settings.causal import read_your_writes_problems
from django_pg_failover.settings.conf import FailoverSettings

if TYPE_CHECKING:
    from django_pg_failover.drivers import Driver

DRIVER_CHECK = "django_pg_failover.E005"


def check_failover_databases(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return database_problems(settings.DATABASES)


def _driver() -> tuple[Driver | None, str | None]:
    """The driver Django uses, or why there is none we can use (missing, too old)."""
    from django_pg_failover.drivers import get_driver

    try:
        return get_driver(), None
    except ImproperlyConfigured as exc:
        return None, str(exc)


def database_problems(databases: Mapping[str, Any]) -> list[checks.CheckMessage]:
    """Every problem of the ``DATABASES`` entries that use this backend."""
    aliases = [(alias, db) for alias, db in databases.items() if db.get("ENGINE") == ENGINE]
    if not aliases:
        return []
    messages: list[checks.CheckMessage] = []
    driver, problem = _driver()
    if problem:
        messages.append(checks.Error(problem, id=DRIVER_CHECK))
    for alias, db in aliases:
        for exc in FailoverSettings.problems(db, alias, driver):
            messages.append(checks.Error(str(exc), id=exc.check_id))
    for exc in read_your_writes_problems(databases):  # rules across aliases
        messages.append(checks.Error(str(exc), id=exc.check_id))
    return messages
