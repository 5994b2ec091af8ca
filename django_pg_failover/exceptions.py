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
