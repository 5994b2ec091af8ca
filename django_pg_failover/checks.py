"""System checks: ``manage.py check`` reports bad settings before anything connects."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings
from django.core import checks

from .exceptions import SettingsError
from .hosts import parse_hosts
from .options import validate_options
from .policy import FailoverPolicy

ENGINE = "django_pg_failover"
DRIVER_CHECK = "django_pg_failover.E005"


def _driver_problem() -> tuple[str | None, int]:
    """(a problem with the driver or None, the libpq version)."""
    try:
        from django.db.backends.postgresql.psycopg_any import is_psycopg3
    except ImportError:
        return "no PostgreSQL driver: pip install 'django-pg-failover[binary]'", 0
    if is_psycopg3:
        return (
            "Django uses psycopg 3 because it is installed, and django_pg_failover "
            "supports psycopg2 only for now: uninstall psycopg",
            0,
        )
    from .errors import libpq_version

    return None, libpq_version()


def check_failover_databases(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return database_problems(settings.DATABASES)


def database_problems(databases: Mapping[str, Any]) -> list[checks.CheckMessage]:
    """Every problem of the ``DATABASES`` entries that use this backend."""
    aliases = [(alias, db) for alias, db in databases.items() if db.get("ENGINE") == ENGINE]
    if not aliases:
        return []
    messages: list[checks.CheckMessage] = []
    problem, libpq_version = _driver_problem()
    if problem:
        messages.append(checks.Error(problem, id=DRIVER_CHECK))
    for alias, db in aliases:
        messages.extend(_alias_problems(alias, db, None if problem else libpq_version))
    return messages


def _alias_problems(
    alias: str, db: dict[str, Any], libpq_version: int | None
) -> list[checks.CheckMessage]:
    options = db.get("OPTIONS") or {}
    validators: list[Callable[[], object]] = [
        lambda: parse_hosts(db.get("HOST", ""), db.get("PORT", ""), alias),
    ]
    if libpq_version is not None:
        from .errors import is_libpq_keyword

        validators.append(lambda: validate_options(options, libpq_version, alias, is_libpq_keyword))
    if isinstance(options, Mapping):
        validators.append(lambda: FailoverPolicy.from_options(options.get("failover"), alias))
    messages: list[checks.CheckMessage] = []
    for validate in validators:
        try:
            validate()
        except SettingsError as exc:
            messages.append(checks.Error(str(exc), id=exc.check_id))
    return messages
