"""A PgBouncer in front of each server: the roles it replays are stale after a failover.

PgBouncer tells every new client what its first server connection reported
(``in_hot_standby``, ``default_transaction_read_only``). After the primary
crashed, a standby was promoted and the old primary rejoined as a standby,
the old primary's PgBouncer still says "primary" and the new primary's still
says "standby". Believed, that report sent every write to a read-only server
(the issue this guards against: 807 of 807 writes failed until the end of the
run).

Each test runs request loops through the PgBouncers, two threads each on
fresh connections (CONN_MAX_AGE=0), on persistent ones (with health checks)
and, with psycopg 3 and Django 5.1+, through Django's pool, while the lab
crashes the primary, promotes a standby and rewinds the old primary back as a
standby:

- ``role_check="query"``: no write that starts after the new primary took one
  fails;
- the default (``"reported"``): once the fault is over (the old primary is a
  standby again and its PgBouncer serves), at most one unit per loop fails,
  on the read-only error that shows the report stale, and writes succeed.

``host_recheck`` is short so that the old primary's PgBouncer is tried again
within the test (with the default 10 s it would sit at the end of the list).
"""

from __future__ import annotations

import threading
import time
from contextlib import closing

import pytest

from django_pg_failover.lab import Cluster
from django_pg_failover.lab.common import APP_DATABASE, APP_USER
from django_pg_failover.lab.pgbouncer import Bouncers
from django_pg_failover.lab.sql import driver
from django_pg_failover.lab.system import wait_for
from tests.aliases import add_alias, remove_alias
from tests.conftest import FAST
from tests.load import RequestLoop, running
from tests.markers import needs_pool

pytestmark = pytest.mark.timeout(120)

#: Threads per kind of connection.
LOOPS = 2
#: Units each loop completes once the fault is over, before the test stops them.
AFTER = 5


def through_bouncers(bouncers: Bouncers, role_check: str, kind: str) -> str:
    """An alias through the PgBouncers: ``kind`` is fresh, persistent or pool."""
    persistent, pool = kind == "persistent", kind == "pool"
    failover = {**FAST["failover"], "host_recheck": 1.0, "role_check": role_check}
    options: dict = {**FAST, "failover": failover}
    if pool:
        options["pool"] = {"min_size": 2, "max_size": 4}
    return add_alias(
        bouncers.django_database(
            OPTIONS=options,
            CONN_MAX_AGE=600 if persistent else 0,
            CONN_HEALTH_CHECKS=persistent,
        )
    )


def in_recovery(bouncers: Bouncers, node) -> bool | None:
    """``pg_is_in_recovery()`` through the PgBouncer in front of ``node``; None if it
    could not run (PgBouncer tries again a server it failed to log in to only when a
    client comes)."""
    sql = driver()
    try:
        with (
            closing(
                sql.connect(
                    host="127.0.0.1",
                    port=bouncers.of(node).port,
                    user=APP_USER,
                    password=bouncers.lab.password,
                    dbname=APP_DATABASE,
                    connect_timeout=2,
                )
            ) as conn,
            closing(conn.cursor()) as cur,
        ):
            cur.execute("SELECT pg_is_in_recovery()")
            return bool(cur.fetchone()[0])
    except sql.Error:
        return None


def crash_promote_rejoin(cluster: Cluster, bouncers: Bouncers, loops: list[RequestLoop]):
    """The fault, under the loops' traffic. Returns (the new primary, when it first took
    a write through its PgBouncer, when the fault was over)."""
    new_port = None

    def acknowledged_on(port: int, since: float) -> float | None:
        done = [loop.first_write_after(since, port) for loop in loops]
        return min((d for d in done if d is not None), default=None)

    # Every PgBouncer has served a client, as in a deployment: each now replays what
    # its server was before the fault.
    assert [in_recovery(bouncers, node) for node in cluster.nodes] == [False, True, True]
    wait_for(lambda: all(loop.acknowledged for loop in loops), 30, "healthy traffic")
    old = cluster.primary
    cluster.crash(old)
    new = cluster.promote()
    cluster.follow([n for n in cluster.standbys if n is not old])
    new_port = bouncers.of(new).port
    promoted = time.monotonic()
    took_writes = wait_for(
        lambda: acknowledged_on(new_port, promoted), 30, "a write on the new primary"
    )
    cluster.rejoin(old)
    wait_for(lambda: in_recovery(bouncers, old), 30, "the old primary's PgBouncer to serve")
    over = time.monotonic()
    wait_for(
        lambda: all(
            len([u for u in loop.acknowledged if u.started >= over]) >= AFTER for loop in loops
        ),
        30,
        f"{AFTER} writes per loop after the fault",
    )
    return new, took_writes, over


KINDS = ["fresh", "persistent"] + (["pool"] if not needs_pool.args[0] else [])


def run_through_fault(
    cluster: Cluster, bouncers: Bouncers, role_check: str
) -> tuple[list[RequestLoop], int, float, float]:
    aliases = {kind: through_bouncers(bouncers, role_check, kind) for kind in KINDS}
    loops = [
        RequestLoop(alias, f"{kind} {i}", threading.Event())
        for kind, alias in aliases.items()
        for i in range(LOOPS)
    ]
    try:
        with running(loops):
            new, took_writes, over = crash_promote_rejoin(cluster, bouncers, loops)
    finally:
        for alias in aliases.values():
            remove_alias(alias)
    for loop in loops:
        print(f"\n{loop.label}: {len(loop.units)} units, errors {dict(loop.errors)}", end="")
    return loops, bouncers.of(new).port, took_writes, over


def assert_recovered(loops: list[RequestLoop], new_port: int, over: float) -> None:
    for loop in loops:
        last = [u for u in loop.units if u.started >= over][-AFTER:]
        assert [u.port for u in last] == [new_port] * AFTER, loop.label


def test_role_check_query_no_write_fails_after_the_new_primary_took_one(
    cluster: Cluster, pg_bouncers: Bouncers
) -> None:
    loops, new_port, took_writes, over = run_through_fault(cluster, pg_bouncers, "query")
    for loop in loops:
        assert loop.failed_after(took_writes) == [], loop.label
    assert_recovered(loops, new_port, over)


def test_reported_roles_found_stale_fail_one_unit_at_most(
    cluster: Cluster, pg_bouncers: Bouncers
) -> None:
    loops, new_port, _, over = run_through_fault(cluster, pg_bouncers, "reported")
    for loop in loops:
        assert len(loop.failed_after(over)) <= 1, loop.label
    assert_recovered(loops, new_port, over)
