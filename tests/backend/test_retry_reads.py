"""retry_reads: a lost plain SELECT is re-run once; nothing else ever is."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from django.db import Error, OperationalError, connections, transaction

from django_pg_failover.lab import APP_USER, Cluster
from django_pg_failover.lab.common import LOOPBACK, SUPERUSER
from django_pg_failover.lab.system import wait_for
from django_pg_failover.reads import retry as reads
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


# -- what the text cannot show: views, policies, functions (issue: a write run twice) ------

AUDITED = [
    "CREATE TABLE audit_log (n int)",
    # A function that writes, and a view that calls it: "SELECT x FROM v_audited" reads
    # like a plain SELECT.
    "CREATE FUNCTION audit_fn(v bigint) RETURNS bigint LANGUAGE sql VOLATILE "
    "AS 'INSERT INTO audit_log VALUES (1); SELECT v'",
    "CREATE VIEW v_audited AS SELECT audit_fn(id) AS x FROM shop_order",
    "CREATE FUNCTION audited_rows() RETURNS SETOF bigint LANGUAGE sql VOLATILE "
    "AS 'INSERT INTO audit_log VALUES (1); SELECT id FROM shop_order'",
    # A row-level-security policy that writes on every row it checks.
    "CREATE FUNCTION audit_check(v bigint) RETURNS boolean LANGUAGE sql VOLATILE "
    "AS 'INSERT INTO audit_log VALUES (1); SELECT true'",
    "CREATE TABLE secure_rows (id bigint)",
    "INSERT INTO secure_rows VALUES (1)",
    "ALTER TABLE secure_rows ENABLE ROW LEVEL SECURITY",
    "ALTER TABLE secure_rows FORCE ROW LEVEL SECURITY",
    "CREATE POLICY audited ON secure_rows USING (audit_check(id))",
    "GRANT ALL ON audit_log, v_audited, secure_rows TO app",
    "ALTER TABLE audit_log OWNER TO app",
    "ALTER TABLE secure_rows OWNER TO app",
]

WRITING_READS = {
    "view calling a writing function": "SELECT x FROM v_audited",
    "set-returning function that writes": "SELECT * FROM audited_rows()",
    "row-level-security policy that writes": "SELECT id FROM secure_rows",
    "unqualified function of an extension": "SELECT audit_fn(id) FROM shop_order",
}


def audit_rows(cluster: Cluster) -> int:
    return cluster.primary.scalar("SELECT count(*) FROM audit_log", dbname="app")


@pytest.mark.parametrize("case", WRITING_READS)
def test_a_read_that_writes_is_never_re_run(
    cluster: Cluster, make_alias, failover_log, case: str
) -> None:
    cluster.execute(*AUDITED, dbname="app")
    Order.objects.using(make_alias()).create(key="audited")
    alias = make_alias(OPTIONS=RETRY)
    fail_over_under(alias, cluster)
    with pytest.raises(OperationalError):
        raw(alias, WRITING_READS[case])
    assert audit_rows(cluster) == 0  # the lost run was rolled back, and none followed
    assert not any("re-running a read" in r.getMessage() for r in failover_log.records)


def test_the_re_run_is_read_only_even_where_the_checks_were_fooled(
    cluster: Cluster, make_alias, failover_log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: if the new session's checks missed what a view does, the server
    still refuses its write inside the read-only transaction."""
    cluster.execute(*AUDITED, dbname="app")
    Order.objects.using(make_alias()).create(key="audited")
    alias = make_alias(OPTIONS=RETRY)
    monkeypatch.setattr(reads, "confirm_read", lambda connection, statement: None)
    fail_over_under(alias, cluster)
    with pytest.raises(OperationalError):
        raw(alias, "SELECT x FROM v_audited")
    assert any("re-running a read" in r.getMessage() for r in failover_log.records)
    assert any("the re-run tried to write" in r.getMessage() for r in failover_log.records)
    assert audit_rows(cluster) == 0


# -- a function called as a column: "t.audit" is audit(t) when t has no column "audit" ----


def remote_audit(cluster: Cluster) -> list[str]:
    """A read whose function writes through dblink: a write no read-only transaction stops.

    dblink refuses a non-superuser a password-less connection: the function runs as its
    owner, the superuser. On its first run it waits (the test ends the session then).
    """
    remote = f"host={LOOPBACK} port={cluster.primary.port} dbname=app user={SUPERUSER}"
    return [
        "CREATE EXTENSION dblink",
        "CREATE TABLE remote_audit (n int)",
        "CREATE TABLE audited (id int)",
        "INSERT INTO audited VALUES (1)",
        f"GRANT SELECT ON audited TO {APP_USER}",
        "CREATE FUNCTION audit(audited) RETURNS int LANGUAGE sql VOLATILE SECURITY DEFINER AS $$"
        f"  SELECT dblink_exec('{remote}', 'INSERT INTO remote_audit VALUES (1)');"
        "  SELECT 1 FROM pg_sleep(CASE WHEN (SELECT count(*) FROM remote_audit) = 1 "
        "THEN 60 ELSE 0 END) $$",
    ]


def end_the_session_once_audited(cluster: Cluster) -> None:
    """Terminate the app's session once its first run has written (and waits)."""

    def audited_and_waiting() -> list[tuple]:
        return cluster.primary.query(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s AND wait_event = 'PgSleep' "
            "AND (SELECT count(*) FROM remote_audit) = 1",
            [APP_USER],
            dbname="app",
        )

    pid = wait_for(audited_and_waiting, 30, "the first run's write")[0][0]
    cluster.primary.query("SELECT pg_terminate_backend(%s)", [pid])


FUNCTIONS_AS_COLUMNS = {
    "qualified": "SELECT a.audit FROM audited a",
    "parenthesized": "SELECT (a).audit FROM audited a",
    "quoted": 'SELECT a."audit" FROM audited a',
    "in where": "SELECT id FROM audited a WHERE a.audit = 1",
}


@pytest.mark.parametrize("case", FUNCTIONS_AS_COLUMNS)
def test_a_volatile_function_called_as_a_column_is_never_re_run(
    cluster: Cluster, make_alias, failover_log, case: str
) -> None:
    """``a.audit`` reads like a column; the server calls ``audit(a)``. Its write went
    through dblink: a re-run, read-only transaction or not, would write it again."""
    cluster.execute(*remote_audit(cluster), dbname="app")
    alias = make_alias(OPTIONS=RETRY)
    connections[alias].ensure_connection()
    killer = threading.Thread(target=end_the_session_once_audited, args=(cluster,))
    killer.start()
    try:
        raw(alias, FUNCTIONS_AS_COLUMNS[case])
    except OperationalError:
        lost = True
    else:
        lost = False
    finally:
        killer.join()
    assert cluster.primary.scalar("SELECT count(*) FROM remote_audit", dbname="app") == 1
    assert lost  # the original error, not the re-run's rows
    assert not any("re-running a read" in r.getMessage() for r in failover_log.records)
    assert any("audit() is volatile" in r.getMessage() for r in failover_log.records)


def test_a_write_to_pg_settings_ends_read_retry(cluster: Cluster, make_alias, failover_log) -> None:
    """The session read tenant s1's tables; a new session would read public's."""
    cluster.execute(
        "CREATE SCHEMA s1 AUTHORIZATION app",
        "CREATE TABLE s1.shop_order (LIKE public.shop_order INCLUDING ALL)",
        "ALTER TABLE s1.shop_order OWNER TO app",
        dbname="app",
    )
    alias = make_alias(OPTIONS=RETRY)
    raw(alias, "UPDATE pg_settings SET setting = 's1' WHERE name = 'search_path'")
    assert raw(alias, "SELECT current_setting('search_path')") == [("s1",)]
    fail_over_under(alias, cluster)
    with pytest.raises(OperationalError):
        raw(alias, "SELECT count(*) FROM shop_order")
    assert not any("re-running a read" in r.getMessage() for r in failover_log.records)


def test_an_orm_read_after_orm_writes_is_re_run_once(
    cluster: Cluster, make_alias, failover_log
) -> None:
    alias = make_alias(OPTIONS=RETRY)
    Order.objects.using(alias).create(key="w1")
    Order.objects.using(alias).filter(key="w1").update(amount=3)
    Order.objects.using(alias).create(key="w2")
    fail_over_under(alias, cluster)
    assert list(
        Order.objects.using(alias)
        .filter(key__in=["w1", "w2"])
        .order_by("key")
        .values_list("key", "amount")
    ) == [("w1", 3), ("w2", 0)]
    reruns = [r for r in failover_log.records if "re-running a read" in r.getMessage()]
    assert len(reruns) == 1
    assert int(connections[alias].connection.info.port) == cluster.primary.port
