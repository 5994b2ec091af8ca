"""Which SQL the opt-in read retry may re-run (pure logic)."""

from __future__ import annotations

import pytest

from django_pg_failover.drivers import get_driver
from django_pg_failover.reads import has_raw_sql_param, is_retryable_read, leaves_session_unchanged


@pytest.mark.parametrize(
    "sql",
    [
        (
            'SELECT "shop_order"."id", "shop_order"."key" FROM "shop_order" '
            'WHERE "shop_order"."key" = %s'
        ),
        "select count(*) from shop_order",
        "  SELECT 1",
        "SELECT upper(key), coalesce(amount, 0) FROM shop_order ORDER BY id LIMIT 21",
        "SELECT 1;",
        "SELECT id FROM shop_order WHERE key = 'format'",
    ],
)
def test_plain_selects_are_retryable(sql) -> None:
    assert is_retryable_read(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO shop_order (key) VALUES (%s)",
        "UPDATE shop_order SET amount = 1",
        "DELETE FROM shop_order",
        "SELECT * FROM shop_order FOR UPDATE",
        "SELECT * FROM shop_order FOR NO KEY UPDATE SKIP LOCKED",
        "SELECT * FROM shop_order FOR SHARE",
        "select * from shop_order for key share",
        "SELECT * INTO backup FROM shop_order",
        "SELECT nextval('shop_order_id_seq')",
        "SELECT setval('shop_order_id_seq', 10)",
        "SELECT pg_advisory_lock(1)",
        "SELECT pg_try_advisory_xact_lock(1)",
        "SELECT set_config('work_mem', '1GB', false)",
        "SELECT txid_current()",
        "SELECT lo_create(0)",
        "SELECT dblink_exec('...')",
        "SELECT pg_notify('chan', 'x')",
        "SELECT 1; DELETE FROM shop_order",
        "WITH gone AS (DELETE FROM shop_order RETURNING *) SELECT * FROM gone",
        "-- comment\nSELECT 1",
        "EXPLAIN ANALYZE SELECT 1",
        b"SELECT 1",
        None,
    ],
)
def test_everything_else_is_not(sql) -> None:
    assert not is_retryable_read(sql)


@pytest.mark.parametrize(
    "sql",
    [
        # Ways to hide a call with side effects from the name patterns.
        "SELECT \"nextval\"('s')",
        "SELECT pg_catalog.\"setval\"('s', 1)",
        'SELECT "pg_advisory_lock"(1)',
        "SELECT nextval/**/('s')",
        "SELECT U&\"\\006Eextval\"('s')",
        "SELECT cron.schedule('* * * * *', 'DELETE FROM t')",
        "SELECT public.my_function(1)",
        # Built-ins with side effects that are not pg_*.
        "SELECT lowrite(1, 'x')",
        "SELECT setseed(0.5)",
        "SELECT query_to_xml(%s, true, false, '')",
        "SELECT brin_summarize_new_values('i')",
        "SELECT gin_clean_pending_list('i')",
    ],
)
def test_hidden_or_unlisted_side_effects_are_not_retryable(sql) -> None:
    assert not is_retryable_read(sql)


def orm_selects() -> list[str]:
    from django.db import connection
    from django.db.models import Count, Exists, OuterRef, Sum
    from django.db.models.functions import Upper

    from shop.models import Account, Order

    querysets = [
        Order.objects.filter(key="a"),
        Order.objects.filter(key__in=["a", "b"]).order_by("-created_at")[:10],
        Order.objects.values("key").annotate(n=Count("id"), total=Sum("amount")),
        Order.objects.annotate(upper=Upper("key")).exclude(amount__gt=5),
        Order.objects.filter(Exists(Account.objects.filter(name=OuterRef("key")))),
        Account.objects.filter(id__in=Order.objects.values("amount")),
    ]
    return [qs.query.get_compiler(connection=connection).as_sql()[0] for qs in querysets]


def test_what_the_orm_sends_for_reads_is_retryable() -> None:
    for sql in orm_selects():
        assert is_retryable_read(sql), sql


@pytest.mark.parametrize(
    "sql",
    [
        'INSERT INTO "shop_order" ("key", "amount", "created_at") VALUES (%s, %s, %s) '
        'RETURNING "shop_order"."id"',
        'UPDATE "shop_account" SET "balance" = ("shop_account"."balance" + %s) '
        'WHERE "shop_account"."id" = %s',
        'DELETE FROM "shop_order" WHERE "shop_order"."id" IN (%s, %s)',
        "SELECT 1",
    ],
)
def test_plain_statements_leave_the_session_unchanged(sql) -> None:
    assert leaves_session_unchanged(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SET search_path TO tenant_1",
        "SET ROLE reporting",
        "SELECT set_config('app.tenant', '1', false)",
        "SELECT pg_advisory_lock(1)",
        "CREATE TEMPORARY TABLE scratch (id int)",
        "PREPARE q AS SELECT 1",
        "LISTEN orders",
        "BEGIN",
        "CALL refresh_totals()",
        "INSERT INTO t VALUES (1); SET search_path TO x",
        "UPDATE t SET x = pg_advisory_lock(1)",
        None,
    ],
)
def test_statements_that_may_change_the_session(sql) -> None:
    assert not leaves_session_unchanged(sql)


@pytest.mark.skipif(get_driver().name != "psycopg2", reason="AsIs is psycopg2's type")
def test_raw_sql_parameters_psycopg2_asis() -> None:
    from psycopg2.extensions import AsIs

    is_raw_sql = get_driver().is_raw_sql
    assert not has_raw_sql_param(None, is_raw_sql)
    assert not has_raw_sql_param(["a", 1, None], is_raw_sql)
    assert not has_raw_sql_param({"key": "a"}, is_raw_sql)
    assert has_raw_sql_param([1, AsIs("nextval('s')")], is_raw_sql)
    assert has_raw_sql_param({"n": AsIs("1")}, is_raw_sql)


@pytest.mark.skipif(get_driver().name != "psycopg", reason="psycopg 3's adaptation")
def test_psycopg3_refuses_sql_as_a_parameter_so_none_is_raw() -> None:
    import psycopg
    from psycopg import adapt, sql

    with pytest.raises(psycopg.ProgrammingError, match="cannot adapt type 'SQL'"):
        adapt.Transformer().as_literal(sql.SQL("nextval('s')"))
    assert not has_raw_sql_param([sql.SQL("x"), sql.Literal(1)], get_driver().is_raw_sql)
