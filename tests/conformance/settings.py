"""The settings module runtests.py gets: Django's own test settings, the lab's servers.

Both backends get the same servers in the same order: a closed loopback port
first, then the standbys, then the primary, so that every connection of the
suite walks past a dead host and two wrong-role ones.
"""

from __future__ import annotations

import os
import pprint
from pathlib import Path
from typing import Any

from django_pg_failover.lab import Cluster

BACKENDS = {"stock": "django.db.backends.postgresql", "ours": "django_pg_failover"}
LOOPBACK = "127.0.0.1"


def host_ports(cluster: Cluster, closed_port: int) -> list[int]:
    return [closed_port, *(node.port for node in cluster.standbys), cluster.primary.port]


def database(cluster: Cluster, backend: str, ports: list[int], name: str) -> dict[str, Any]:
    """One ``DATABASES`` entry: each backend's usual way of listing several servers."""
    entry = cluster.django_database(ENGINE=BACKENDS[backend], NAME=name)
    if backend == "ours":
        entry.update(HOST=[f"{LOOPBACK}:{port}" for port in ports], OPTIONS={})
    else:
        # What libpq (psycopg2) and psycopg 3 read as a host list.
        entry.update(
            HOST=",".join(LOOPBACK for _ in ports),
            PORT=",".join(str(port) for port in ports),
            OPTIONS={"target_session_attrs": "read-write"},
        )
    # Test databases named after the backend: a run interrupted by one never
    # leaves a database in the way of the other's.
    entry["TEST"] = {"NAME": f"test_{backend}_{name}"}
    return entry


def databases(cluster: Cluster, backend: str, ports: list[int]) -> dict[str, dict[str, Any]]:
    # runtests needs the two aliases of Django's test_sqlite.py.
    return {
        "default": database(cluster, backend, ports, "default"),
        "other": database(cluster, backend, ports, "other"),
    }


def write_module(folder: Path, backend: str, dbs: dict[str, dict[str, Any]]) -> str:
    """Write the settings module for ``backend`` into ``folder``; return its name."""
    module = f"conformance_{backend}"
    text = (
        f'"""Django\'s test settings (test_sqlite.py) on the lab, with {BACKENDS[backend]}.\n\n'
        'Written by python -m tests.conformance for one run (the lab is gone after it).\n"""\n\n'
        "from test_sqlite import *  # noqa: F403\n\n"
        f"DATABASES = {pprint.pformat(dbs, sort_dicts=False)}\n"
    )
    path = folder / f"{module}.py"
    # It holds the lab's password.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    return module
