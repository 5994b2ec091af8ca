"""The libpq options this backend sets defaults for and validates.

Every other key of ``OPTIONS`` goes to libpq unchanged, as with Django's own
backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .exceptions import SettingsError

OPTIONS_CHECK = "django_pg_failover.E004"

DEFAULT_TARGET_SESSION_ATTRS = "read-write"
# libpq waits as long as TCP does on a hung host when no timeout is set.
DEFAULT_CONNECT_TIMEOUT = 5

TARGET_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
# Values only libpq 14 and later understand.
TARGET_SESSION_ATTRS_LIBPQ_14 = frozenset({"read-only", "primary", "standby", "prefer-standby"})
# A session that must be able to write: a read-only error on it means the
# server was demoted under us.
WRITABLE_SESSION_ATTRS = frozenset({"read-write", "primary"})
# The backend shuffles the hosts itself (libpq 16's own shuffle would undo the
# status ordering), so "random" works with any libpq.
LOAD_BALANCE_HOSTS = ("disable", "random")
# OPTIONS keys that are not libpq's: ours, Django's, and psycopg2's connect() arguments.
NOT_LIBPQ_KEYWORDS = frozenset(
    {
        "failover",
        "load_balance_hosts",  # the backend's own shuffle; never given to libpq
        "isolation_level",
        "assume_role",
        "server_side_binding",
        "pool",
        "cursor_factory",
        "connection_factory",
        "async",
        "async_",
    }
)


def target_session_attrs(options: Mapping[str, Any]) -> str:
    return options.get("target_session_attrs") or DEFAULT_TARGET_SESSION_ATTRS


def validate_options(
    options: Mapping[str, Any],
    libpq_version: int,
    alias: str | None = None,
    is_libpq_keyword: Callable[[str], bool] | None = None,
) -> None:
    """Check the options whose bad values libpq would report obscurely, or never.

    ``is_libpq_keyword`` (the driver's knowledge of libpq) catches misspelt keys.
    """
    keys = ("OPTIONS",)
    if not isinstance(options, Mapping):
        # The type only: a DSN string put here would carry the password.
        raise SettingsError(alias, keys, f"a {type(options).__name__} is not a dict", OPTIONS_CHECK)
    if is_libpq_keyword is not None:
        for key in options:
            if key not in NOT_LIBPQ_KEYWORDS and not is_libpq_keyword(str(key)):
                raise SettingsError(
                    alias,
                    (*keys, str(key)),
                    "libpq has no such connection option (misspelt?)",
                    OPTIONS_CHECK,
                )
    tsa = target_session_attrs(options)
    if tsa not in TARGET_SESSION_ATTRS:
        raise SettingsError(
            alias,
            (*keys, "target_session_attrs"),
            f"{tsa!r} is not one of {', '.join(TARGET_SESSION_ATTRS)}",
            OPTIONS_CHECK,
        )
    if tsa in TARGET_SESSION_ATTRS_LIBPQ_14 and libpq_version < 140000:
        raise SettingsError(
            alias,
            (*keys, "target_session_attrs"),
            f"{tsa!r} needs libpq 14 or later; this driver uses libpq "
            f"{_libpq_label(libpq_version)}",
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
                f"{timeout!r} is not a whole number of seconds in 1..3600 (0 would "
                "wait forever on a hung host)",
                OPTIONS_CHECK,
            )

    if "load_balance_hosts" in options:
        balance = options["load_balance_hosts"]
        if balance not in LOAD_BALANCE_HOSTS:
            raise SettingsError(
                alias,
                (*keys, "load_balance_hosts"),
                f"{balance!r} is not one of {', '.join(LOAD_BALANCE_HOSTS)}",
                OPTIONS_CHECK,
            )


def _libpq_label(version: int) -> str:
    major, minor = divmod(version, 10000)
    return f"{major}.{minor}" if major >= 10 else str(version)
