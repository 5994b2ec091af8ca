"""A secret store whose password the tests rotate on the lab, and the provider that reads it.

The store stands for Vault or a cloud's token service: :meth:`Store.rotate`
sets a new password on the primary (``ALTER ROLE``), waits for the standbys
to replay it, and only then answers with it, the rotation seen as one step by
readers (a reader that asks meanwhile waits for it). :func:`provider` is what
a deployment writes: it caches the password and asks the store again only
when told ``refresh`` (after a server refused the cached one).

A module of its own, not a test module: the backend imports the provider by
its dotted path, and a test module imported twice would hold two stores.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from contextlib import closing
from typing import Any

from django_pg_failover.lab import Cluster

#: The provider's dotted path, as ``OPTIONS["failover"]["password"]`` names it.
PROVIDER = "tests.backend.passwords.provider"


class Store:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.role = ""
        self.current = ""
        #: The provider's cache (one per process, as a deployment's would be).
        self.cached: str | None = None
        #: Every call: (port, refresh).
        self.calls: list[tuple[int, bool]] = []
        #: What the provider returns instead, every time (a broken deployment).
        self.always: str | None = None
        #: Raised by the provider instead, every time.
        self.fails: Exception | None = None
        self.rotations = 0

    def reset(self, role: str = "", password: str = "") -> None:
        self.__init__()  # type: ignore[misc]
        self.role, self.current = role, password

    def refreshes(self) -> int:
        return sum(refresh for _, refresh in self.calls)

    def rotate(self, cluster: Cluster) -> None:
        """A new password on the primary, replayed by the running standbys, then given out."""
        new = secrets.token_urlsafe(12)  # [A-Za-z0-9_-]: safe in a literal
        with self.lock:
            with closing(cluster.primary.connect(connect_timeout=2)) as conn, conn.cursor() as cur:
                cur.execute(f"ALTER ROLE {self.role} PASSWORD '{new}'")
            cluster.wait_replayed(timeout=10)
            self.current = new
            self.rotations += 1


STORE = Store()


def provider(*, host: str, port: int, user: str | None, refresh: bool = False) -> str:
    STORE.calls.append((port, refresh))
    assert user == STORE.role
    if STORE.fails is not None:
        raise STORE.fails
    if STORE.always is not None:
        return STORE.always
    if refresh or STORE.cached is None:
        with STORE.lock:
            STORE.cached = STORE.current
    return STORE.cached


def create_role(cluster: Cluster) -> tuple[str, str]:
    """A login role that may write the shop's tables, with a password (replayed by standbys)."""
    role, password = f"rotor_{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(12)
    with closing(cluster.primary.connect("app")) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        cur.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        cur.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    cluster.wait_replayed()
    return role, password


def drop_role(cluster: Cluster, role: str) -> None:
    with closing(cluster.primary.connect("app")) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role]
        )
        cur.execute(f"DROP OWNED BY {role}")
        cur.execute(f"DROP ROLE {role}")


def options(**failover: Any) -> dict[str, Any]:
    """OPTIONS of an alias whose password comes from :func:`provider`."""
    return {
        "connect_timeout": 2,
        "failover": {"retry_timeout": 15.0, "backoff_max": 0.25, "password": PROVIDER, **failover},
    }
