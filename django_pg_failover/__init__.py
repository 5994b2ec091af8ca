"""A Django database backend for PostgreSQL that survives a failover."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django_pg_failover.settings.dburl import config, parse

__version__ = "0.1.0"

#: What ``DATABASES[alias]["ENGINE"]`` says for this backend.
ENGINE = "django_pg_failover"

__all__ = ["config", "parse"]


def __getattr__(name: str) -> Any:
    # Light on purpose: Django imports this package for ENGINE and the lab's pytest
    # plugin for every test run. config() and parse() load on first use, and even
    # then import neither django.db nor a driver until called.
    if name in __all__:
        from django_pg_failover.settings import dburl

        return getattr(dburl, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
