"""The PostgreSQL driver Django uses, behind one small interface.

Django uses psycopg 3 whenever it can import it, and psycopg2 otherwise
(``django.db.backends.postgresql.psycopg_any``); this package follows the
same choice. Everything that knows a driver (exception types, SQLSTATEs,
connection state, libpq) lives in one module per driver; nothing else in the
package imports psycopg or psycopg2.
"""

from __future__ import annotations

import functools

from django.core.exceptions import ImproperlyConfigured

from .base import TRANSACTION_IDLE_CODE, Driver, Notice, TransactionStatus

__all__ = ["TRANSACTION_IDLE_CODE", "Driver", "Notice", "TransactionStatus", "get_driver"]

INSTALL_HINT = (
    "pip install 'django-pg-failover[psycopg]' (psycopg 3, with its connection pool) "
    "or 'django-pg-failover[psycopg2]'"
)


@functools.cache
def get_driver() -> Driver:
    """The driver Django uses in this process, checked against our minimum versions.

    Django's rule (``django.db.backends.postgresql.psycopg_any``): psycopg 3
    when ``import psycopg`` works, psycopg2 otherwise. Applied here without
    importing ``django.db``, so that ``config()`` can run in a settings module.
    """
    driver_class: type[Driver]
    try:
        import psycopg  # noqa: F401
    except ImportError:
        try:
            import psycopg2  # noqa: F401
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"django_pg_failover needs a PostgreSQL driver: {INSTALL_HINT}"
            ) from exc
        from .psycopg2 import Psycopg2Driver

        driver_class = Psycopg2Driver
    else:
        from .psycopg3 import Psycopg3Driver

        driver_class = Psycopg3Driver
    driver = driver_class()
    driver.check_version()
    return driver
