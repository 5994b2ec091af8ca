"""Temporary Django database aliases, for tests that point several at one lab."""

from __future__ import annotations

import itertools
from contextlib import suppress
from typing import Any

from django.db import connections

_numbers = itertools.count()


def add_alias(settings: dict[str, Any]) -> str:
    # Unique for the session: threads that outlive a test (asgiref's executor)
    # keep their own connection per alias name.
    alias = f"lab_{next(_numbers)}"
    connections.settings[alias] = connections.configure_settings({"default": {}, alias: settings})[
        alias
    ]
    return alias


def remove_alias(alias: str) -> None:
    with suppress(Exception):
        connections[alias].close()
    with suppress(Exception):
        connections[alias].close_pool()  # Django keeps a pool per alias, for every thread
    with suppress(AttributeError):
        del connections[alias]
    connections.settings.pop(alias, None)
