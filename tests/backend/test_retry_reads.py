"""retry_reads: a lost plain SELECT is re-run once; nothing else ever is."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.db import Error, OperationalError, connections, transaction

from django_pg_failover.lab import Cluster
from shop.models import Order

pytestmark = pytest.mark.timeout(120)

RETRY = {"failover": {"retry_reads": True, "retry_timeout": 10, "backoff_max": 0.2}}


def raw(alias: str, sql: str) -> list[tuple]:
    with connections[alias].cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall() if cursor.description else []


def fail_over_under(alias: str, cluster: Cluster) -> None:
    """Open a connection on the primary, then crash it and promote a standby."""
    connections[alias].ensure_connection()
    cluster.wait_replayed()
    cluster.failover(fault="crash")


def test_lost_plain_select_is_re_run_on_the_new_primary(
    cluster: Cluster, make_alias, failover_log
) -> None:
    alias = make_alias(OPTIONS=RETRY)
    Order.objects.using(alias).create(key="read-me")
    fail_over_under(alias, cluster)
    assert Order.objects.using(alias).filter(key="read-me").count() == 1
    assert int(connections[alias].connection.info.port) == cluster.primary.port
    assert any("re-running a read" in r.getMessage() for r in failover_log.records)


def test_off_by_default(cluster: Cluster, make_alias) -> None:
    alias = make_alias()
    fail_over_under(alias, cluster)
    with pytest.raises(OperationalError):
        Order.objects.using(alias).count()


def in_atomic(alias: str, work: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with transaction.atomic(using=alias):
            return work()

    return run


def without_autocommit(alias: str, work: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        transaction.set_autocommit(False, using=alias)
        return work()

    return run


NOT_RETRIED = {
    "select for update": lambda a: raw(a, "SELECT * FROM shop_order FOR UPDATE"),
    "nextval": lambda a: raw(a, "SELECT nextval('shop_order_id_seq')"),
    "insert": lambda a: Order.objects.using(a).create(key="never-twice"),
    "update": lambda a: Order.objects.using(a).update(amount=7),
    "cte": lambda a: raw(a, "WITH x AS (SELECT 1) SELECT * FROM x"),
    "select in atomic": lambda a: in_atomic(a, lambda: Order.objects.using(a).count())(),
    "select without autocommit": lambda a: without_autocommit(
        a, lambda: Order.objects.using(a).count()
    )(),
    "server-side cursor": lambda a: list(Order.objects.using(a).iterator(chunk_size=10)),
}


@pytest.mark.parametrize("case", NOT_RETRIED)
def test_never_re_run(cluster: Cluster, make_alias, failover_log, case: str) -> None:
    alias = make_alias(OPTIONS=RETRY)
    fail_over_under(alias, cluster)
    with pytest.raises(Error):
        NOT_RETRIED[case](alias)
    assert not any("re-running a read" in r.getMessage() for r in failover_log.records)
    connections[alias].close()  # start afresh (after autocommit off, the backend insists)
    assert not Order.objects.using(alias).filter(key="never-twice").exists()
    assert not Order.objects.using(alias).filter(amount=7).exists()


def test_errors_other_than_a_lost_connection_are_not_retried(
    cluster: Cluster, make_alias, failover_log
) -> None:
    alias = make_alias(OPTIONS=RETRY)
    with pytest.raises(Error, match="division by zero"):
        raw(alias, "SELECT 1 / 0")
    assert connections[alias].connection is not None  # still open: nothing was lost
    assert not any("re-running a read" in r.getMessage() for r in failover_log.records)


def begin_on_the_driver_cursor(alias: str) -> None:
    """A transaction Django does not know about: only the server's status shows it."""
    connections[alias].ensure_connection()
    connections[alias].connection.cursor().execute("BEGIN")


SESSION_STATE = {
    "transaction opened by raw sql": lambda a: raw(a, "BEGIN"),
    "transaction opened on the driver's cursor": begin_on_the_driver_cursor,
    "search_path": lambda a: raw(a, "SET search_path TO public"),
    "set_config": lambda a: raw(a, "SELECT set_config('app.tenant', '1', false)"),
    "advisory lock": lambda a: raw(a, "SELECT pg_advisory_lock(1)"),
    "temporary table": lambda a: raw(a, "CREATE TEMPORARY TABLE scratch (id int)"),
}


@pytest.mark.parametrize("case", SESSION_STATE)
def test_never_re_run_when_the_lost_session_held_state(
    cluster: Cluster, make_alias, failover_log, case: str
) -> None:
    """A new session would lack the transaction, setting, lock or table: the read raises."""
    alias = make_alias(OPTIONS=RETRY)
    SESSION_STATE[case](alias)
    fail_over_under(alias, cluster)
    with pytest.raises(OperationalError):
        Order.objects.using(alias).count()
    assert not any("re-running a read" in r.getMessage() for r in failover_log.records)
    # The next query is a new session: plain reads are retried again on it.
    assert Order.objects.using(alias).filter(key="nothing").count() == 0
    fail_over_under(alias, cluster)
    assert Order.objects.using(alias).filter(key="nothing").count() == 0
    assert any("re-running a read" in r.getMessage() for r in failover_log.records)
