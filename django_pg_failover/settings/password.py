"""``OPTIONS["failover"]["password"]``: a callable that gives each new connection its password.

For passwords that rotate: cloud IAM tokens (AWS RDS, Entra ID), Vault's
database leases. The rules, and why:

- The value is a dotted path (``"package.module.function"``, imported when the
  settings are read, as Django's own dotted-path settings are) or the callable
  itself. The path is the form to prefer: a settings module that imports
  the function pulls its imports (boto3, a Vault client) into every command,
  and the settings are compared on every connect, a path cheaply.
- The provider is called as ``provider(host=..., port=..., user=...)``: the
  host and port of the one server about to be connected (IAM tokens are signed
  per host), and ``USER`` (None when unset: libpq then uses the operating
  system's user). A provider that also takes ``refresh`` (or ``**kwargs``) gets
  ``refresh=True`` on the one call made after a server refused the password it
  gave (:mod:`..connecting.password`): a cache to skip.
- It must return a non-empty string. Anything else, and anything it raises,
  fails that host's attempt with a :class:`PasswordProviderError` naming the
  alias, the provider and the host: never the password, and what it raised
  is written redacted (:mod:`.redact`).
- ``PASSWORD`` (or ``OPTIONS["password"]``) beside it is an error, not a
  fallback: a provider exists because the password changes, so a fixed one
  next to it is a leftover that one of the two sources would silently ignore.
- A string that is not shaped like a dotted path is never echoed in the
  error: it may be the password itself, put here by mistake.

Validated with the rest of the entry (:mod:`.conf`); reported as
``django_pg_failover.E003``, the check of ``OPTIONS["failover"]``.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django_pg_failover.exceptions import SettingsError
from django_pg_failover.settings.hosts import Host
from django_pg_failover.settings.policy import FAILOVER_CHECK
from django_pg_failover.settings.redact import redact, redacted

KEYS = ("OPTIONS", "failover", "password")
#: Identifiers joined by dots, at least two: "package.module.function".
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


class PasswordProviderError(Exception):
    """The provider raised, or returned no usable password: that host's attempt fails."""

    def __init__(self, alias: str | None, host: Host, reason: str) -> None:
        super().__init__(f"database alias {redacted(alias)}: {reason} (connecting to {host})")
        #: Why, without the alias (an error about the alias lists it per host).
        self.reason = reason


@dataclass(frozen=True)
class PasswordProvider:
    """The alias's password provider, validated. Its ``repr`` names the provider only."""

    alias: str | None
    #: The dotted path given, or the callable's module and qualified name.
    name: str
    function: Callable[..., Any] = field(repr=False, compare=False)
    #: The function takes ``refresh`` (see the module's docstring).
    takes_refresh: bool = False

    @property
    def identity(self) -> tuple[str, int]:
        """Who asks for passwords: keys the process's watcher of a host list.

        Not the provider object: each thread's wrapper validates its own.
        """
        return (self.name, id(self.function))

    def password(self, host: Host, user: str | None, refresh: bool = False) -> str:
        """A password for ``user`` at ``host``; raises :class:`PasswordProviderError`."""
        kwargs: dict[str, Any] = {"host": host.host, "port": host.port, "user": user}
        if refresh and self.takes_refresh:
            kwargs["refresh"] = True
        name = redacted(self.name)
        try:
            value = self.function(**kwargs)
        except Exception as exc:
            text = " ".join(str(exc).split())
            what = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
            raise PasswordProviderError(
                self.alias, host, f"the password provider {name} raised {redact(what)}"
            ) from None  # its traceback may hold the secret in a frame's locals
        if not isinstance(value, str) or not value:
            got = f"a {type(value).__name__} object" if value != "" else "an empty string"
            raise PasswordProviderError(
                self.alias,
                host,
                f"the password provider {name} returned {got}, not a password string",
            )
        return value


def password_provider(
    settings_dict: Mapping[str, Any], alias: str | None
) -> PasswordProvider | None:
    """The entry's provider, validated (None when there is none)."""
    options = settings_dict.get("OPTIONS") or {}
    failover = options.get("failover") if isinstance(options, Mapping) else None
    if not isinstance(failover, Mapping) or failover.get("password") is None:
        return None
    value = failover["password"]
    if settings_dict.get("PASSWORD") or options.get("password"):
        where = ("PASSWORD",) if settings_dict.get("PASSWORD") else ("OPTIONS", "password")
        raise SettingsError(
            alias,
            where,
            "set beside OPTIONS['failover']['password']: the provider gives every "
            "connection its password; remove one of the two",
            FAILOVER_CHECK,
        )
    if isinstance(value, str):
        name, function = value, _imported(value, alias)
    elif callable(value):
        function = value
        name = getattr(value, "__qualname__", None) or type(value).__qualname__
        module = getattr(value, "__module__", None) or type(value).__module__
        name = f"{module}.{name}" if module else name
    else:
        raise SettingsError(
            alias,
            KEYS,
            f"a {type(value).__name__} object is neither a dotted path to a callable "
            "('package.module.function') nor a callable",
            FAILOVER_CHECK,
        )
    return PasswordProvider(alias, name, function, _check_signature(function, name, alias))


def _imported(path: str, alias: str | None) -> Callable[..., Any]:
    if not _DOTTED.fullmatch(path):
        raise SettingsError(
            alias,
            KEYS,
            "not a dotted path to a callable ('package.module.function'); the value is not "
            "shown (it may be a password: that goes in PASSWORD, without a provider)",
            FAILOVER_CHECK,
        )
    module_path, _, attribute = path.rpartition(".")
    try:
        module = importlib.import_module(module_path)
    except Exception as exc:  # ImportError, or whatever the module raised as it ran
        text = " ".join(str(exc).split())
        raise SettingsError(
            alias,
            KEYS,
            f"{redacted(path)}: cannot import {redacted(module_path)} "
            f"({type(exc).__name__}: {redact(text)})",
            FAILOVER_CHECK,
        ) from None
    function = getattr(module, attribute, None)
    if function is None:
        raise SettingsError(
            alias,
            KEYS,
            f"{redacted(path)}: {redacted(module_path)} has no {redacted(attribute)}",
            FAILOVER_CHECK,
        )
    if not callable(function):
        raise SettingsError(
            alias,
            KEYS,
            f"{redacted(path)} is a {type(function).__name__} object, not callable",
            FAILOVER_CHECK,
        )
    return function


def _check_signature(function: Callable[..., Any], name: str, alias: str | None) -> bool:
    """Whether it takes ``refresh``; an error when it cannot take host, port and user."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some built-ins have none: called as documented
        return False
    try:
        signature.bind(host="", port=0, user="")
    except TypeError as exc:
        raise SettingsError(
            alias,
            KEYS,
            f"{redacted(name)} cannot be called as provider(host=..., port=..., user=...): {exc}",
            FAILOVER_CHECK,
        ) from None
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD or p.name == "refresh"
        for p in signature.parameters.values()
    )
