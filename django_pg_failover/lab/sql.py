"""How the lab talks to its servers: psycopg 3 or psycopg2, the one Django would use.

The lab needs no Django, so it does not go through the backend's driver
layer; it only opens superuser connections in autocommit and runs a few
statements with client-side parameters (``ALTER SYSTEM`` takes no server-side
ones).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

from .errors import LabError


@functools.cache
def driver() -> SimpleNamespace:
    """``connect(**params)`` and the ``Error``/``OperationalError`` types to catch."""
    try:
        import psycopg
    except ImportError:
        pass
    else:

        def connect(**params: Any) -> Any:
            return psycopg.connect(cursor_factory=psycopg.ClientCursor, **params)

        return SimpleNamespace(
            connect=connect, Error=psycopg.Error, OperationalError=psycopg.OperationalError
        )
    try:
        import psycopg2
    except ImportError:
        raise LabError(
            "the lab talks to its servers with psycopg 3 or psycopg2: "
            "pip install 'django-pg-failover[lab,psycopg]'"
        ) from None
    return SimpleNamespace(
        connect=psycopg2.connect, Error=psycopg2.Error, OperationalError=psycopg2.OperationalError
    )
