"""Losing the server under an open connection: crash, promotion, demotion, real faults."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from contextlib import closing, suppress

import pytest
from django.db import (
    Error,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    connections,
    transaction,
)

from django_pg_failover import signals
from django_pg_failover.connecting.memory import HostState, host_status
from django_pg_failover.lab import Cluster, Node
from django_pg_failover.lab.system import wait_for
from django_pg_failover.settings.hosts import Host
from shop.models import Order
from tests.markers import needs_pool

from .units import WriteLoop, create, in_request, keys_on, port_of, stock_alias

pytestmark = pytest.mark.timeout(120)


def test_write_loop_survives_crash_and_promotion_where_stock_fails(
    cluster: Cluster, make_alias
) -> None:
    ours_alias = make_alias(OPTIONS={"failover": {"retry_timeout": 10, "backoff_max": 0.1}})
    stock = stock_alias(make_alias)
    crashed_at: list[float] = []
    stop = threading.Event()
    ours, theirs = WriteLoop(ours_alias, crashed_at, stop), WriteLoop(stock, crashed_at, stop)
    threads = [threading.Thread(target=loop.run) for loop in (ours, theirs)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)  # healthy traffic first
        old = cluster.primary
        cluster.crash(old)
        # Units that began while the kill was under way may have reached the old
        # primary: they count as in flight. Later ones cannot have.
        crashed_at.append(time.monotonic())
        time.sleep(1.5)
        new = cluster.promote()
        time.sleep(1.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)

    print(
        f"\nfailed operations after the crash: django_pg_failover={ours.failed_after_crash} "
        f"(in flight: {ours.failed_in_flight}), stock={theirs.failed_after_crash} "
        f"(in flight: {theirs.failed_in_flight})"
    )
    assert ours.failed_after_crash == 0
    assert ours.failed_in_flight <= 1
    assert ours.ports[0] == old.port
    assert ours.ports[-1] == new.port
    assert theirs.failed_after_crash > 0
    # Every write acknowledged by the new primary is there, once.
    after = [k for k, p in zip(ours.acknowledged, ours.ports, strict=True) if p == new.port]
    assert sorted(keys_on(new, after)) == sorted(after)


def test_loss_outside_atomic_raises_then_next_query_reconnects(
    cluster: Cluster, make_alias
) -> None:
    alias = make_alias()
    stock = stock_alias(make_alias)

    def request() -> None:
        create(alias, "before")
        create(stock, "stock-before")
        cluster.crash(cluster.primary)
        new = cluster.promote()
        with pytest.raises(OperationalError):
            create(alias, "lost")
        create(alias, "after")  # same request, new primary
        assert port_of(alias) == new.port
        # Django's own backend keeps the dead connection for the rest of the request.
        with pytest.raises(OperationalError):
            create(stock, "stock-lost")
        # psycopg2: InterfaceError "connection already closed"; psycopg 3:
        # OperationalError "the connection is closed".
        with pytest.raises(
            (InterfaceError, OperationalError), match=r"connection (already|is) closed"
        ):
            create(stock, "stock-after")

    in_request(request)
    assert keys_on(cluster.primary, ["lost", "after", "stock-lost", "stock-after"]) == ["after"]


def test_loss_inside_atomic_loses_the_transaction_and_replays_nothing(
    cluster: Cluster, make_alias
) -> None:
    alias = make_alias()
    create(alias, "committed")

    def transfer() -> None:
        with transaction.atomic(using=alias):
            create(alias, "in-transaction-1")
            cluster.crash(cluster.primary)
            cluster.promote()
            create(alias, "in-transaction-2")

    with pytest.raises(OperationalError):
        transfer()
    create(alias, "after")  # the block has exited: reconnect
    assert sorted(keys_on(cluster.primary, ["in-transaction-1", "in-transaction-2", "after"])) == [
        "after"
    ]


def test_inside_atomic_no_reconnect_until_the_block_exits(cluster: Cluster, make_alias) -> None:
    alias = make_alias()
    create(alias, "warm-up")
    with transaction.atomic(using=alias):
        create(alias, "doomed-1")
        cluster.crash(cluster.primary)
        cluster.promote()
        with pytest.raises(OperationalError):
            create(alias, "doomed-2")
        started = time.monotonic()
        with pytest.raises(ProgrammingError, match="Cannot open a new connection in an atomic"):
            create(alias, "doomed-3")
        assert time.monotonic() - started < 0.5  # no waiting for a server either
    assert connections[alias].connection is None
    create(alias, "after")
    assert keys_on(cluster.primary, ["doomed-1", "doomed-2", "doomed-3", "after"]) == ["after"]


def insert_raw(alias: str, key: str) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "INSERT INTO shop_order (key, amount, created_at) VALUES (%s, 0, now())", [key]
        )


def test_a_loss_swallowed_inside_atomic_still_fails_the_block(cluster: Cluster, make_alias) -> None:
    """Django would let the block exit without a word; its commit raises instead.

    (An error from the ORM's save() marks the block for rollback, on every backend:
    Django then rolls it back without raising. A raw query does not.)
    """
    alias = make_alias()
    create(alias, "warm-up")

    def block() -> None:
        with transaction.atomic(using=alias):
            insert_raw(alias, "swallowed-1")
            cluster.crash(cluster.primary)
            cluster.promote()
            with suppress(OperationalError):  # what the docs tell you not to do
                insert_raw(alias, "swallowed-2")

    with pytest.raises(OperationalError, match="lost inside this atomic block"):
        block()
    create(alias, "after")
    assert keys_on(cluster.primary, ["swallowed-1", "swallowed-2", "after"]) == ["after"]


def test_a_loss_swallowed_in_a_nested_block_fails_the_outer_one(
    cluster: Cluster, make_alias
) -> None:
    alias = make_alias()
    create(alias, "warm-up")

    def block() -> None:
        with transaction.atomic(using=alias):
            create(alias, "outer")
            # Django's pattern for going on after an error in a savepoint:
            with suppress(OperationalError), transaction.atomic(using=alias):
                cluster.crash(cluster.primary)
                cluster.promote()
                create(alias, "inner")

    with pytest.raises(OperationalError, match="lost inside this atomic block"):
        block()
    create(alias, "after")
    assert keys_on(cluster.primary, ["outer", "inner", "after"]) == ["after"]


def test_a_commit_lost_with_no_primary_reports_the_loss_at_once(
    cluster: Cluster, make_alias
) -> None:
    """The block's error is not held back while a new primary is awaited."""
    alias = make_alias(OPTIONS={"failover": {"retry_timeout": 10}})
    create(alias, "warm-up")
    crashed_at = []

    def block() -> None:
        with transaction.atomic(using=alias):
            create(alias, "unsent-commit")
            cluster.crash(cluster.primary)
            crashed_at.append(time.monotonic())

    with pytest.raises(OperationalError) as excinfo:
        block()
    assert time.monotonic() - crashed_at[0] < 3  # not retry_timeout
    assert "could not connect" not in str(excinfo.value)
    cluster.promote()
    create(alias, "after")
    assert keys_on(cluster.primary, ["unsent-commit", "after"]) == ["after"]


def set_synchronous_standby(node: Node, name: str | None) -> None:
    """Make (None: stop making) every COMMIT on ``node`` wait for standby ``name``."""
    if name is None:
        node.query("ALTER SYSTEM RESET synchronous_standby_names")
    else:
        node.query("ALTER SYSTEM SET synchronous_standby_names = %s", [name])
    node.query("SELECT pg_reload_conf()")
    # The checkpointer decides whether commits wait, once it has read the
    # file: until a probe commit shows it, it may still decide the old way.
    wait_for(lambda: commit_waits(node) is (name is not None), 10, "the new setting", 0.02)


def commit_waits(node: Node) -> bool:
    """Whether a COMMIT on ``node`` waits for a synchronous standby (a probe waits 0.1 s)."""
    with closing(node.connect(autocommit=False)) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
        # WAL written under a transaction id: only such a COMMIT waits.
        cursor.execute("SELECT pg_logical_emit_message(true, 'probe', '')")
        # statement_timeout ends before COMMIT's wait; a cancel request ends it.
        canceller = threading.Timer(0.1, node.query, ["SELECT pg_cancel_backend(%s)", [pid]])
        canceller.start()
        started = time.monotonic()
        conn.commit()
        waited = time.monotonic() - started >= 0.09
        canceller.cancel()
        canceller.join()
        return waited


@pytest.mark.parametrize("pool", [False, pytest.param(True, marks=needs_pool)], ids=["", "pool"])
def test_a_commit_whose_answer_is_lost_is_reported_as_unknown_not_lost(
    cluster: Cluster, make_alias, failover_log, pool: bool
) -> None:
    """The server committed, then the session went before it answered: never "lost"."""
    alias = make_alias(OPTIONS={"pool": {"min_size": 1, "max_size": 2}} if pool else {})
    create(alias)  # warm-up
    primary, key = cluster.primary, uuid.uuid4().hex
    lost: list[dict] = []

    def on_lost(**kwargs) -> None:
        lost.append(kwargs)

    def end_the_session_once_committed() -> None:
        # COMMIT is durable here and waits for a synchronous standby that never
        # comes; ending the session then is what a crash at that moment does.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            waiting = primary.query("SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
            if waiting:
                primary.query("SELECT pg_terminate_backend(%s)", [waiting[0][0]])
                return
            time.sleep(0.01)

    set_synchronous_standby(primary, "nobody")
    signals.connection_lost.connect(on_lost)
    killer = threading.Thread(target=end_the_session_once_committed)
    try:
        killer.start()
        with pytest.raises(OperationalError), transaction.atomic(using=alias):
            create(alias, key)
    finally:
        killer.join()
        signals.connection_lost.disconnect(on_lost)
        set_synchronous_standby(primary, None)

    assert keys_on(primary, [key]) == [key]  # committed: "lost" would have been a lie
    assert [(e["during_commit"], e["in_atomic_block"]) for e in lost] == [(True, False)]
    warnings = [r.getMessage() for r in failover_log.records if r.levelname == "WARNING"]
    assert any("the COMMIT's outcome is unknown" in w for w in warnings), warnings
    assert not any("the transaction is lost" in w for w in warnings), warnings
    after = create(alias)  # the next use reconnects
    assert keys_on(primary, [after]) == [after]


def test_demoted_primary_read_only_error_then_real_primary(cluster: Cluster, make_alias) -> None:
    alias = make_alias()
    old = cluster.primary
    create(alias, "on-old")
    cluster.wait_replayed()
    cluster.make_read_only(old)
    new = cluster.promote()
    with pytest.raises(Error) as excinfo:
        create(alias, "refused")
    assert connections[alias].driver.sqlstate(excinfo.value.__cause__) == "25006"
    create(alias, "on-new")
    assert port_of(alias) == new.port
    assert keys_on(new, ["on-old", "refused", "on-new"]) == ["on-old", "on-new"]


def test_read_only_error_on_an_any_session_is_the_callers(cluster: Cluster, make_alias) -> None:
    standby = cluster.standbys[0]
    alias = make_alias(HOST=[f"127.0.0.1:{standby.port}"], OPTIONS={"target_session_attrs": "any"})
    with pytest.raises(Error):
        create(alias, "refused")
    # The session was not closed: the standby is what this alias asked for.
    assert connections[alias].connection is not None
    assert int(connections[alias].connection.info.port) == standby.port


@pytest.mark.parametrize("health_checks", [True, False])
def test_persistent_connection_across_failover(
    cluster: Cluster, make_alias, health_checks: bool
) -> None:
    """The connection died while idle: the next request reconnects before sending anything."""
    alias = make_alias(CONN_MAX_AGE=600, CONN_HEALTH_CHECKS=health_checks)
    stock = make_alias(stock=True, CONN_MAX_AGE=600, CONN_HEALTH_CHECKS=health_checks)
    for name in (alias, stock):
        in_request(lambda name=name: create(name))
    kept = connections[alias].connection
    in_request(lambda: create(alias))
    assert connections[alias].connection is kept  # persistent indeed
    old = cluster.crash(cluster.primary)
    new = cluster.promote()
    in_request(lambda: create(alias))  # no error: the dead connection was dropped first
    assert port_of(alias) == new.port
    # ...and the backend counts that as a lost connection like any other.
    assert host_status.snapshot()[Host("127.0.0.1", old.port)].state is HostState.DOWN
    if not health_checks:  # Django's stock backend sends the statement and fails
        with pytest.raises(Error):
            in_request(lambda: create(stock))


def test_threads_each_reconnect(cluster: Cluster, make_alias) -> None:
    alias = make_alias(OPTIONS={"failover": {"retry_timeout": 10, "backoff_max": 0.1}})
    results: dict[int, tuple[int, int, list[int]]] = {}
    started = threading.Barrier(9)
    crashed = threading.Event()

    def worker(n: int) -> None:
        failures, ports = 0, []
        in_request(lambda: create(alias))
        started.wait()
        crashed.wait()
        for _ in range(5):
            try:
                ports.append(in_request(lambda: create(alias) and port_of(alias)))
            except Error:
                failures += 1
        results[n] = (failures, len(ports), ports)
        connections.close_all()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    started.wait()
    cluster.crash(cluster.primary)
    crashed.set()
    time.sleep(0.5)
    new = cluster.promote()
    for thread in threads:
        thread.join(30)
    assert len(results) == 8
    for failures, successes, ports in results.values():
        assert failures == 0
        assert successes == 5
        assert set(ports) == {new.port}


def test_async_orm_reconnects(cluster: Cluster, make_alias) -> None:
    alias = make_alias()

    async def scenario() -> tuple[int, type]:
        await Order.objects.using(alias).acreate(key="async-before")
        cluster.wait_replayed()
        cluster.crash(cluster.primary)
        cluster.promote()
        try:
            await Order.objects.using(alias).acreate(key="async-lost")
        except Error as exc:
            error = type(exc)
        await Order.objects.using(alias).acreate(key="async-after")
        return await Order.objects.using(alias).filter(key__startswith="async").acount(), error

    count, error = asyncio.run(scenario())
    assert error is OperationalError
    assert count == 2
    assert keys_on(cluster.primary, ["async-lost", "async-after"]) == ["async-after"]


def test_loss_with_autocommit_off_is_not_hidden(cluster: Cluster, make_alias) -> None:
    alias = make_alias()
    transaction.set_autocommit(False, using=alias)
    create(alias, "manual-1")
    cluster.crash(cluster.primary)
    new = cluster.promote()
    with pytest.raises(OperationalError):
        create(alias, "manual-2")
    # No silent reconnect into autocommit: the transaction of manual-1 is gone.
    with pytest.raises(ProgrammingError, match="lost while autocommit was off"):
        create(alias, "manual-3")
    # Nor a commit that reports success for it.
    with pytest.raises(OperationalError, match="nothing since the last commit was committed"):
        transaction.commit(using=alias)
    transaction.rollback(using=alias)  # allowed: it is what the server did
    transaction.set_autocommit(False, using=alias)  # the code decides how to go on
    create(alias, "manual-4")
    transaction.commit(using=alias)
    transaction.set_autocommit(True, using=alias)
    assert port_of(alias) == new.port
    assert keys_on(new, ["manual-1", "manual-2", "manual-3", "manual-4"]) == ["manual-4"]


def test_loss_with_autocommit_off_ends_with_the_request(cluster: Cluster, make_alias) -> None:
    alias = make_alias()

    def request() -> None:
        transaction.set_autocommit(False, using=alias)
        create(alias, "request-1")
        cluster.crash(cluster.primary)
        cluster.promote()
        with pytest.raises(OperationalError):
            create(alias, "request-2")

    in_request(request)
    in_request(lambda: create(alias, "next-request"))  # a new request starts afresh
    assert keys_on(cluster.primary, ["request-1", "request-2", "next-request"]) == ["next-request"]


def test_own_read_only_transaction_is_not_a_demotion(cluster: Cluster, make_alias) -> None:
    alias = make_alias()
    create(alias, "warm-up")
    kept = connections[alias].connection

    def read_only_write() -> None:
        with transaction.atomic(using=alias):
            with connections[alias].cursor() as cursor:
                cursor.execute("SET TRANSACTION READ ONLY")
            create(alias, "refused")

    with pytest.raises(Error) as excinfo:
        read_only_write()
    assert connections[alias].driver.sqlstate(excinfo.value.__cause__) == "25006"
    # The server is still the writable primary: the connection stays. (Asked, on a
    # new connection since the transaction failed, the server confirmed its report.)
    assert connections[alias].connection is kept
    assert host_status.distrusted == set()
    create(alias, "accepted")
    assert keys_on(cluster.primary, ["refused", "accepted"]) == ["accepted"]


def test_atomic_block_inside_a_manual_transaction(cluster: Cluster, make_alias) -> None:
    """Django leaves this case stuck for good; the backend turns it into a lost transaction."""
    alias = make_alias()
    transaction.set_autocommit(False, using=alias)
    create(alias, "manual-before")

    def block() -> None:
        with transaction.atomic(using=alias):
            create(alias, "in-block-1")
            cluster.crash(cluster.primary)
            cluster.promote()
            create(alias, "in-block-2")

    with pytest.raises(OperationalError):
        block()
    with pytest.raises(ProgrammingError, match="lost while autocommit was off"):
        create(alias, "after-block")
    transaction.set_autocommit(True, using=alias)
    create(alias, "recovered")
    assert port_of(alias) == cluster.primary.port
    assert keys_on(
        cluster.primary, ["manual-before", "in-block-1", "in-block-2", "after-block", "recovered"]
    ) == ["recovered"]
