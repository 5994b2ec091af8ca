"""The libpq options this backend sets defaults for and validates.

Every other key of ``OPTIONS`` goes to libpq unchanged, as with Django's own
backend.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import django

from django_pg_failover.exceptions import SettingsError
from django_pg_failover.settings.redact import redacted

if TYPE_CHECKING:
    from django_pg_failover.drivers import Driver

OPTIONS_CHECK = "django_pg_failover.E004"
POOL_CHECK = "django_pg_failover.E006"

DEFAULT_TARGET_SESSION_ATTRS = "read-write"
# libpq waits as long as TCP does on a hung host when no timeout is set.
DEFAULT_CONNECT_TIMEOUT = 5

TARGET_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
# The backend shuffles the hosts itself (libpq 16's own shuffle would undo the
# status ordering), so "random" works with any libpq.
LOAD_BALANCE_HOSTS = ("disable", "random")
# OPTIONS keys that are not libpq's: ours, Django's, and the drivers' connect() arguments.
NOT_LIBPQ_KEYWORDS = frozenset(
    {
        "failover",
        "load_balance_hosts",  # the backend's own shuffle; never given to libpq
        "isolation_level",
        "assume_role",
        "server_side_binding",
        "pool",
        "cursor_factory",
        # psycopg2
        "connection_factory",
        "async",
        "async_",
        # psycopg 3
        "context",
        "prepare_threshold",
        "row_factory",
        "autocommit",
    }
)


def target_session_attrs(options: Mapping[str, Any]) -> str:
    return options.get("target_session_attrs") or DEFAULT_TARGET_SESSION_ATTRS


def check_options_type(options: Any, alias: str | None) -> None:
    """``OPTIONS`` must be a mapping. Only its type is named: a DSN string put
    there would carry the password."""
    if not isinstance(options, Mapping):
        raise SettingsError(
            alias, ("OPTIONS",), f"a {type(options).__name__} is not a dict", OPTIONS_CHECK
        )


def validate_options(
    options: Mapping[str, Any], driver: Driver | None, alias: str | None = None
) -> None:
    """Check the options whose bad values libpq would report obscurely, or never.

    The driver's knowledge of libpq catches misspelt keys and values the
    installed libpq is too old for; without a driver those are not checked.
    """
    keys = ("OPTIONS",)
    check_options_type(options, alias)
    if driver is not None:
        for key in options:
            if key not in NOT_LIBPQ_KEYWORDS and not driver.is_libpq_keyword(str(key)):
                raise SettingsError(
                    alias,
                    (*keys, str(key)),
                    "libpq has no such connection option (misspelt?)",
                    OPTIONS_CHECK,
                )
    for key in ("host", "port", "hostaddr"):
        if key in options:
            raise SettingsError(
                alias,
                (*keys, key),
                "list the servers in HOST (and PORT), not in OPTIONS: the backend walks "
                "that list itself",
                OPTIONS_CHECK,
            )
    tsa = target_session_attrs(options)
    if tsa not in TARGET_SESSION_ATTRS:
        raise SettingsError(
            alias,
            (*keys, "target_session_attrs"),
            f"{redacted(tsa)} is not one of {', '.join(TARGET_SESSION_ATTRS)}",
            OPTIONS_CHECK,
        )
    if "connect_timeout" in options:
        timeout = options["connect_timeout"]
        number = None
        if isinstance(timeout, int) and not isinstance(timeout, bool):
            number = timeout
        elif isinstance(timeout, str) and timeout.strip().isascii() and timeout.strip().isdigit():
            number = int(timeout)
        if number is None or not 1 <= number <= 3600:
            raise SettingsError(
                alias,
                (*keys, "connect_timeout"),
                f"{redacted(timeout)} is not a whole number of seconds in 1..3600 (0 would "
                "wait forever on a hung host)",
                OPTIONS_CHECK,
            )

    if "load_balance_hosts" in options:
        balance = options["load_balance_hosts"]
        if balance not in LOAD_BALANCE_HOSTS:
            raise SettingsError(
                alias,
                (*keys, "load_balance_hosts"),
                f"{redacted(balance)} is not one of {', '.join(LOAD_BALANCE_HOSTS)}",
                OPTIONS_CHECK,
            )


# -- OPTIONS["pool"] -------------------------------------------------------------------------

#: The oldest psycopg_pool the backend works with, and why.
MINIMUM_PSYCOPG_POOL = (3, 3, 0)
_MINIMUM_PSYCOPG_POOL_REASON = "drain() replaces the idle connections to a lost server at once"
# ConnectionPool arguments Django, or this backend, sets itself.
_RESERVED_POOL_OPTIONS = frozenset({"conninfo", "kwargs", "open", "configure", "connection_class"})
_POOL_COUNTS = {"min_size": 0, "max_waiting": 0, "num_workers": 1}
_POOL_SECONDS = ("timeout", "max_lifetime", "max_idle", "reconnect_timeout")
_POOL_CALLBACKS = ("check", "reset", "reconnect_failed")


def validate_pool(
    pool: Any, settings_dict: Mapping[str, Any], driver: Driver | None, alias: str | None
) -> None:
    """``OPTIONS["pool"]``: what Django would reject late, or psycopg_pool obscurely."""
    keys: tuple[str | int, ...] = ("OPTIONS", "pool")
    if driver is not None and driver.name != "psycopg":
        raise SettingsError(
            alias,
            keys,
            # Django's own words first: code and tests look for them.
            "Database pooling requires psycopg >= 3 (Django's connection pool), and Django "
            "uses psycopg2 here: pip install 'django-pg-failover[psycopg]'",
            POOL_CHECK,
        )
    if django.VERSION < (5, 1):
        raise SettingsError(alias, keys, "Django's connection pool needs Django 5.1+", POOL_CHECK)
    if settings_dict.get("CONN_MAX_AGE", 0) != 0:
        raise SettingsError(
            alias,
            ("CONN_MAX_AGE",),
            "Pooling doesn't support persistent connections. Set it to 0 to use OPTIONS['pool'].",
            POOL_CHECK,
        )
    if pool is True:
        pool = {}
    if not isinstance(pool, Mapping):
        raise SettingsError(
            alias, keys, f"{redacted(pool)} is neither True nor a dict of pool options", POOL_CHECK
        )
    try:
        import psycopg_pool
    except ImportError:
        raise SettingsError(
            alias,
            keys,
            "psycopg_pool is not installed: pip install 'django-pg-failover[psycopg]'",
            POOL_CHECK,
        ) from None
    version = tuple(int(p) for p in psycopg_pool.__version__.split(".")[:3] if p.isdigit())
    if version < MINIMUM_PSYCOPG_POOL:
        wanted = ".".join(map(str, MINIMUM_PSYCOPG_POOL))
        raise SettingsError(
            alias,
            keys,
            f"psycopg_pool {psycopg_pool.__version__} is too old: the backend needs {wanted}+ "
            f"({_MINIMUM_PSYCOPG_POOL_REASON}): pip install --upgrade 'psycopg_pool>={wanted}'",
            POOL_CHECK,
        )
    known = set(inspect.signature(psycopg_pool.ConnectionPool).parameters) - _RESERVED_POOL_OPTIONS
    if django.VERSION < (6, 1):
        known.discard("check")  # Django sets it (CONN_HEALTH_CHECKS) and refuses a second
    for key, value in pool.items():
        where = (*keys, str(key))
        if key not in known:
            raise SettingsError(
                alias,
                where,
                "not an option this backend's pool takes"
                + (" (Django sets it)" if key in _RESERVED_POOL_OPTIONS or key == "check" else "")
                + f"; known: {', '.join(sorted(known))}",
                POOL_CHECK,
            )
        _check_pool_value(str(key), value, alias, where)
    min_size = pool.get("min_size", 4)
    max_size = pool.get("max_size")
    if max_size is not None and max_size < max(min_size, 1):
        raise SettingsError(
            alias,
            (*keys, "max_size"),
            f"{redacted(max_size)} is smaller than min_size ({min_size}) or 1",
            POOL_CHECK,
        )


def _check_pool_value(key: str, value: Any, alias: str | None, where: tuple) -> None:
    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    problem = None
    if key in _POOL_COUNTS and not (whole(value) and value >= _POOL_COUNTS[key]):
        problem = f"{redacted(value)} is not a whole number >= {_POOL_COUNTS[key]}"
    elif key == "max_size" and value is not None and not (whole(value) and value >= 1):
        problem = f"{redacted(value)} is not a whole number >= 1 (or None)"
    elif key in _POOL_SECONDS and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 10**7
    ):
        problem = f"{redacted(value)} is not a positive number of seconds"
    elif key in _POOL_CALLBACKS and value is not None and not callable(value):
        problem = f"{redacted(value)} is not callable"
    elif key == "name" and not isinstance(value, str):
        problem = f"{redacted(value)} is not a string"
    if problem:
        raise SettingsError(alias, where, problem, POOL_CHECK)
