"""Errors the backend raises about its own settings."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured


class SettingsError(ImproperlyConfigured):
    """A ``DATABASES`` entry this backend cannot use.

    The message names the alias and the setting; ``check_id`` is the system
    check that reports the same problem in ``manage.py check``.
    """

    def __init__(
        self, alias: str | None, keys: tuple[str | int, ...], problem: str, check_id: str
    ) -> None:
        path = "".join(f"[{key!r}]" for key in keys)
        where = f"DATABASES[{alias!r}]{path}" if alias is not None else f"DATABASES[...]{path}"
        super().__init__(f"{where}: {problem}")
        self.check_id = check_id
        #: The setting's path below the alias (``("HOST", 1)``) and what is wrong
        #: with it, for callers that word the error for another source.
        self.keys = keys
        self.problem = problem


class DatabaseURLError(ImproperlyConfigured):
    """A database URL (``DATABASE_URL``) that :func:`django_pg_failover.config` cannot use.

    The message starts with where the URL came from (the environment
    variable's name) and never contains the password.
    """

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem
