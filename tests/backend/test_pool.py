"""Django's connection pool (``OPTIONS["pool"]``) through real faults, ours beside Django's.

Django's pool exists only on psycopg 3: these tests run in the psycopg 3 run of
the suite; the psycopg2 run checks that a pool is refused with one clear error.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import Error, OperationalError, connections, transaction

from django_pg_failover import signals
from django_pg_failover.connecting.memory import HostState, host_status
from django_pg_failover.drivers import get_driver
from django_pg_failover.lab import Cluster
from django_pg_failover.lab.cluster import free_port
from django_pg_failover.settings.hosts import Host
from tests.markers import needs_pool

from .units import WriteLoop, create, in_request, keys_on, run_loops

pytestmark = pytest.mark.timeout(120)

POOL = {"min_size": 2, "max_size": 4}


def pooled(make_alias, stock: bool = False, pool: dict | None = None, **overrides) -> str:
    options = {"pool": {**POOL, **(pool or {})}, **overrides.pop("OPTIONS", {})}
    return make_alias(stock=stock, OPTIONS=options, **overrides)


def server_port(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT inet_server_port()")
        return cursor.fetchone()[0]


@needs_pool
def test_the_pool_opens_connections_the_backends_way(cluster: Cluster, make_alias) -> None:
    """Standbys listed first: the pool lands on the primary and the memory, signals, log learn."""
    established: list[dict] = []

    def on_established(**kwargs) -> None:
        established.append(kwargs)

    alias = pooled(
        make_alias,
        HOST=[f"127.0.0.1:{n.port}" for n in [*cluster.standbys, cluster.primary]],
    )
    signals.connection_established.connect(on_established)
    try:
        assert in_request(lambda: server_port(alias)) == cluster.primary.port
        pool = connections[alias].pool
        pool.wait(timeout=10)  # min_size connections opened
    finally:
        signals.connection_established.disconnect(on_established)
    assert type(pool).__name__ == "FailoverPool"
    assert len(established) >= POOL["min_size"]
    assert {(e["port"], e["role"]) for e in established} == {(cluster.primary.port, "primary")}
    states = {h.port: r.state for h, r in host_status.snapshot().items()}
    assert states == {
        **{n.port: HostState.STANDBY for n in cluster.standbys},
        cluster.primary.port: HostState.PRIMARY,
    }


@needs_pool
def test_pool_failover_under_load_where_the_stock_pool_fails(cluster: Cluster, make_alias) -> None:
    # More connections than threads: idle ones sit in the pool when the server dies.
    ours_alias = pooled(make_alias, pool={"min_size": 8, "max_size": 8})
    stock = pooled(make_alias, stock=True, pool={"min_size": 8, "max_size": 8})
    for alias in (ours_alias, stock):
        in_request(lambda alias=alias: create(alias))
        connections[alias].pool.wait(timeout=10)
    crashed_at: list[float] = []
    stop = threading.Event()
    ours = [WriteLoop(ours_alias, crashed_at, stop, pause=0.1) for _ in range(4)]
    theirs = [WriteLoop(stock, crashed_at, stop, pause=0.1) for _ in range(4)]
    promoted_at: list[float] = []

    def fault() -> None:
        cluster.crash(cluster.primary)
        crashed_at.append(time.monotonic())
        time.sleep(1.5)  # a cluster manager's reaction time
        cluster.promote()
        promoted_at.append(time.monotonic())
        time.sleep(2.0)

    run_loops([*ours, *theirs], fault)
    new = cluster.primary
    print(
        "\nfailed units started after the crash, pool: django_pg_failover="
        f"{sum(loop.failed_after_crash for loop in ours)}, stock="
        f"{sum(loop.failed_after_crash for loop in theirs)}"
    )
    assert sum(loop.failed_after_crash for loop in ours) == 0
    # Django's stock pool hands out each pooled connection once more after the crash.
    assert sum(loop.failed_after_crash for loop in theirs) >= 1
    first_ok = min(t for loop in ours for t in loop.done_at if t > promoted_at[0])
    assert first_ok - promoted_at[0] < 1.0
    acknowledged = [
        key
        for loop in ours
        for key, port in zip(loop.acknowledged, loop.ports, strict=True)
        if port == new.port
    ]
    assert sorted(keys_on(new, acknowledged)) == sorted(acknowledged)


@needs_pool
def test_pool_never_hands_out_a_connection_to_a_fenced_server(cluster: Cluster, make_alias) -> None:
    """psycopg_pool's check (an empty query) passes on a read-only primary; ours does not."""
    alias = pooled(make_alias, CONN_HEALTH_CHECKS=True)
    stock = pooled(make_alias, stock=True, CONN_HEALTH_CHECKS=True)
    for name in (alias, stock):
        in_request(lambda name=name: create(name))
        connections[name].pool.wait(timeout=10)
    old = cluster.primary
    cluster.wait_replayed()
    cluster.make_read_only(old)
    new = cluster.promote()
    keys = [in_request(lambda: create(alias)) for _ in range(6)]
    assert port_of_write(alias, keys) == {new.port}
    with pytest.raises(Error) as excinfo:  # the stock pool hands out a fenced connection
        in_request(lambda: create(stock))
    assert get_driver().sqlstate(excinfo.value.__cause__) == "25006"


def port_of_write(alias: str, keys: list[str]) -> set[int]:
    """The servers that hold ``keys`` (every key, once)."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT inet_server_port(), count(*) FROM shop_order WHERE key = ANY(%s) GROUP BY 1",
            [keys],
        )
        rows = cursor.fetchall()
    assert sum(count for _, count in rows) == len(keys)
    return {port for port, _ in rows}


@needs_pool
def test_pool_through_a_switchover(cluster: Cluster, make_alias) -> None:
    alias = pooled(make_alias)
    crashed_at: list[float] = []
    stop = threading.Event()
    loops = [WriteLoop(alias, crashed_at, stop) for _ in range(4)]

    def fault() -> None:
        crashed_at.append(time.monotonic())
        cluster.switchover()
        time.sleep(1.0)

    run_loops(loops, fault)
    # A planned switchover: the old primary shuts down (57P01) under the pool.
    assert sum(loop.failed_after_crash for loop in loops) <= 4  # units in flight at the stop
    late = [t for loop in loops for t in loop.done_at if t > crashed_at[0]]
    assert late, "no write served after the switchover"
    assert {loop.ports[-1] for loop in loops} == {cluster.primary.port}


@needs_pool
def test_pool_recovers_after_every_host_was_down_longer_than_reconnect_timeout(
    cluster: Cluster, make_alias
) -> None:
    alias = pooled(
        make_alias,
        pool={"reconnect_timeout": 1.0},
        OPTIONS={"failover": {"retry_timeout": 20, "backoff_max": 0.25}},
    )
    in_request(lambda: create(alias))
    primary = cluster.primary
    for node in cluster.nodes:
        cluster.crash(node)
    down_since = time.monotonic()
    result: dict[str, float] = {}

    def request() -> None:
        started = time.monotonic()
        try:
            in_request(lambda: create(alias))
        except Error:
            result["failed"] = time.monotonic() - started
        else:
            result["served"] = time.monotonic()

    waiter = threading.Thread(target=request)
    waiter.start()
    # Longer than reconnect_timeout: psycopg_pool alone would have given up by now.
    time.sleep(max(0.0, down_since + 3.0 - time.monotonic()))
    cluster.start(primary)
    back = time.monotonic()
    waiter.join(30)
    assert "failed" not in result
    assert result["served"] - back < 1.0
    # ...and later requests too.
    in_request(lambda: create(alias))
    assert server_port(alias) == primary.port


@needs_pool
def test_waiting_for_a_pool_is_bounded_and_names_each_host(cluster: Cluster, make_alias) -> None:
    dead = [free_port(), free_port()]
    alias = pooled(
        make_alias,
        HOST=[f"127.0.0.1:{port}" for port in dead],
        OPTIONS={"failover": {"retry_timeout": 2}},
    )
    started = time.monotonic()
    with pytest.raises(OperationalError) as excinfo:
        in_request(lambda: create(alias))
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed < 5.0  # retry_timeout, not the pool's 30 s
    message = str(excinfo.value)
    assert "retry_timeout reached" in message
    for port in dead:
        assert f"127.0.0.1:{port}: Connection refused" in message
    assert "PoolTimeout" not in type(excinfo.value.__cause__).__name__


@needs_pool
def test_a_pool_whose_every_host_refuses_fails_at_once(cluster: Cluster, make_alias) -> None:
    secret = f"Wrong-{uuid.uuid4().hex[:8]}"
    alias = pooled(make_alias, PASSWORD=secret, OPTIONS={"failover": {"retry_timeout": 10}})
    for _ in range(2):  # the request that met the refusal, and one after it
        started = time.monotonic()
        with pytest.raises(OperationalError) as excinfo:
            in_request(lambda: create(alias))
        assert time.monotonic() - started < 2.0
        message = str(excinfo.value)
        assert "waiting will not fix it" in message
        assert 'password authentication failed for user "app"' in message
        assert secret not in message


@needs_pool
def test_a_connection_lost_in_an_atomic_block_gives_its_slot_back(
    cluster: Cluster, make_alias
) -> None:
    alias = pooled(make_alias, pool={"min_size": 1, "max_size": 1, "timeout": 5})
    in_request(lambda: create(alias))

    def doomed() -> None:
        with transaction.atomic(using=alias):
            create(alias)
            cluster.crash(cluster.primary)
            cluster.promote()
            create(alias)

    with pytest.raises(OperationalError):
        in_request(doomed)
    in_request(lambda: create(alias))  # one slot only: PoolTimeout if it had leaked
    assert server_port(alias) == cluster.primary.port


@needs_pool
def test_pool_with_a_hung_first_host(cluster: Cluster, make_alias) -> None:
    hung = cluster.hang(cluster.standbys[0], include_sessions=False)
    # The pool's workers open min_size connections at once; the ones that defer to the
    # first one's search must not wait on the hung host (connect_timeout) but take what
    # it found, and each new pool is as quick as the first.
    alias = pooled(
        make_alias,
        pool={"min_size": 4, "max_size": 8},
        HOST=[f"127.0.0.1:{hung.port}", f"127.0.0.1:{cluster.primary.port}"],
        OPTIONS={"connect_timeout": 2, "failover": {"attempt_delay": 0.2}},
    )
    for _ in range(3):
        started = time.monotonic()
        connections[alias].ensure_connection()
        assert time.monotonic() - started < 1.5  # not connect_timeout
        assert server_port(alias) == cluster.primary.port
        connections[alias].close()
        connections[alias].close_pool()
    assert host_status.state(Host("127.0.0.1", hung.port)) is HostState.DOWN


@needs_pool
def test_a_pool_refuses_persistent_connections(cluster: Cluster, make_alias) -> None:
    alias = pooled(make_alias, CONN_MAX_AGE=60)
    with pytest.raises(ImproperlyConfigured, match=rf"DATABASES\['{alias}'\]\['CONN_MAX_AGE'\]"):
        in_request(lambda: create(alias))


@pytest.mark.skipif(get_driver().name != "psycopg2", reason="the psycopg2 run's own check")
def test_psycopg2_refuses_a_pool_with_one_clear_error(cluster: Cluster, make_alias) -> None:
    alias = pooled(make_alias)
    with pytest.raises(ImproperlyConfigured) as excinfo:
        in_request(lambda: create(alias))
    assert str(excinfo.value) == (
        f"DATABASES['{alias}']['OPTIONS']['pool']: Database pooling requires psycopg >= 3 "
        "(Django's connection pool), and Django uses psycopg2 here: "
        "pip install 'django-pg-failover[psycopg]'"
    )


# -- a busy pool: waiting keeps its place ---------------------------------------------------

BUSY_POOL = {"min_size": 2, "max_size": 2, "timeout": 2.5}
BUSY_THREADS, BUSY_CHECKOUTS, BUSY_HOLD = 16, 15, 0.2


def contend(alias: str, waits: list[float], failures: list[float]) -> None:
    """One thread's checkouts: each waits for a connection, holds it BUSY_HOLD, gives it back."""

    def checkout() -> None:
        started = time.monotonic()
        try:
            connections[alias].ensure_connection()
        except Error:
            failures.append(time.monotonic() - started)
            return
        waits.append(time.monotonic() - started)
        time.sleep(BUSY_HOLD)  # the request's work, on the connection

    try:
        for _ in range(BUSY_CHECKOUTS):
            in_request(checkout)  # request_finished gives the connection back
    finally:
        connections.close_all()


@needs_pool
@pytest.mark.timeout(180)
def test_a_busy_pool_serves_its_waiters_in_turn(cluster: Cluster, make_alias) -> None:
    """16 threads share 2 connections, each held 0.2 s, with a pool timeout of 2.5 s.

    Served in turn, a thread waits for the 14 others to pass, 7 turns of 0.2 s on
    each connection: about 1.4 s, well inside the timeout, as Django's stock pool
    (psycopg_pool's FIFO queue) shows beside ours. A waiter that lost its place in
    the queue (as ours did, once every 0.1 s) can be overtaken again and again and
    time out. Both pools run at once, so that both see the same machine.
    """
    ours = pooled(make_alias, pool=BUSY_POOL)
    stock = pooled(make_alias, stock=True, pool=BUSY_POOL)
    waits: dict[str, list[float]] = {ours: [], stock: []}
    failures: dict[str, list[float]] = {ours: [], stock: []}
    for alias in (ours, stock):
        in_request(lambda alias=alias: connections[alias].ensure_connection())
        connections[alias].pool.wait(timeout=10)
    threads = [
        threading.Thread(target=contend, args=(alias, waits[alias], failures[alias]))
        for _ in range(BUSY_THREADS)
        for alias in (ours, stock)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)

    def figures(alias: str) -> str:
        done, failed = sorted(waits[alias]), failures[alias]
        return (
            f"{len(failed)} of {len(done) + len(failed)} checkouts failed"
            + (f" (after up to {max(failed):.2f}s)" if failed else "")
            + f", wait max {done[-1]:.2f}s median {done[len(done) // 2]:.2f}s"
        )

    print(f"\nbusy pool, stock: {figures(stock)}\nbusy pool, ours: {figures(ours)}")
    assert failures[stock] == []  # the scenario is within what a fair queue serves
    assert failures[ours] == []
    assert max(waits[ours]) < BUSY_POOL["timeout"]
    # Served in turn like the stock pool: a longer wait than its longest by one
    # turn (BUSY_HOLD) covers the scheduling noise of a shared machine.
    assert max(waits[ours]) < max(waits[stock]) + BUSY_HOLD
