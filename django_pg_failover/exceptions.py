"""Errors the backend raises about its own settings.

Neither ever shows a secret: values are written by :func:`.redact.redacted`,
and :meth:`SettingsError.without` cuts an alias's own password out of the rest.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.core.exceptions import ImproperlyConfigured

from django_pg_failover.settings.redact import redacted, scrub


class SettingsError(ImproperlyConfigured):
    """A ``DATABASES`` entry this backend cannot use.

    The message names the alias and the setting; ``check_id`` is the system
    check that reports the same problem in ``manage.py check``.
    """

    def __init__(
        self, alias: str | None, keys: tuple[str | int, ...], problem: str, check_id: str
    ) -> None:
        # A key is the user's too (a misspelt OPTIONS key): written like a value.
        path = "".join(f"[{redacted(key)}]" for key in keys)
        where = "DATABASES[...]" if alias is None else f"DATABASES[{redacted(alias)}]"
        super().__init__(f"{where}{path}: {problem}")
        self.alias = alias
        self.check_id = check_id
        #: The setting's path below the alias (``("HOST", 1)``) and what is wrong
        #: with it, for callers that word the error for another source.
        self.keys = keys
        self.problem = problem

    def without(self, secrets: Iterable[str]) -> SettingsError:
        """This error with ``secrets`` (the alias's own) cut out; itself if none shows."""
        secrets = list(secrets)
        keys = tuple(scrub(key, secrets) if isinstance(key, str) else key for key in self.keys)
        problem = scrub(self.problem, secrets)
        if (keys, problem) == (self.keys, self.problem):
            return self
        return SettingsError(self.alias, keys, problem, self.check_id)


class DatabaseURLError(ImproperlyConfigured):
    """A database URL (``DATABASE_URL``) that :func:`django_pg_failover.config` cannot use.

    The message starts with where the URL came from (the environment
    variable's name) and never contains the password.
    """

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem
