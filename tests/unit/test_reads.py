"""Which SQL the opt-in read retry may re-run, and which ends it (the text's part of the rule)."""

from __future__ import annotations

import sys

import pytest

from django_pg_failover.drivers import get_driver
from django_pg_failover.reads import statements
from django_pg_failover.reads.retry import has_raw_sql_param
from django_pg_failover.reads.statements import Kind, classify

READS = [
    'SELECT "shop_order"."id", "shop_order"."key" FROM "shop_order" WHERE "shop_order"."key" = %s',
    "select count(*) from shop_order",
    "  SELECT 1",
    "SELECT upper(key), coalesce(amount, 0) FROM shop_order ORDER BY id LIMIT 21",
    "SELECT 1;",
    "SELECT id FROM shop_order WHERE key = 'format'",
    # A comment or a literal is read as such: it hides nothing.
    "-- a comment\nSELECT 1",
    "SELECT 'set_config(1)' FROM shop_order /* nextval('s') */",
    "SELECT EXTRACT(YEAR FROM created_at) FROM shop_order",
]


@pytest.mark.parametrize("sql", READS)
def test_plain_selects_are_reads(sql) -> None:
    assert classify(sql).kind is Kind.READ


def test_reads_name_their_relations_and_functions() -> None:
    statement = classify(
        'SELECT COUNT(*), lower(o."key") FROM "shop_order" o INNER JOIN public.shop_account '
        'a ON (o."key" = a.name), extra WHERE EXTRACT(YEAR FROM o.created_at) IN (%s) '
        "AND o.id IN (SELECT id FROM (SELECT id FROM other_table) sub)"
    )
    assert statement.kind is Kind.READ
    assert statement.relations == (
        '"shop_order"',
        "public.shop_account",
        "extra",
        "other_table",
    )
    assert statement.functions == ("count", "lower", "extract")


def test_reads_name_every_name_written_after_a_dot() -> None:
    """``t.audit`` is a call of ``audit(t)`` when ``t`` has no column ``audit``."""
    statement = classify(
        'SELECT t.audit, (t).other, (t.id).scal, s.t."Col" FROM s.t '
        "WHERE (SELECT x FROM u).w = 1 AND arr[1].f > 0 ORDER BY t.audit, 'a.b', 1.5"
    )
    assert statement.kind is Kind.READ
    assert statement.attributes == ("audit", "other", "id", "scal", "t", "Col", "w", "f")
    assert classify("SELECT audit FROM t").attributes == ()


PLAINS = [
    'INSERT INTO "shop_order" ("key", "amount", "created_at") VALUES (%s, %s, %s) '
    'RETURNING "shop_order"."id"',
    'UPDATE "shop_account" SET "balance" = ("shop_account"."balance" + %s) '
    'WHERE "shop_account"."id" = %s',
    'DELETE FROM "shop_order" WHERE "shop_order"."id" IN (%s, %s)',
    "UPDATE ONLY shop_order SET key = lower(key)",
    # Gone with the transaction, or read-only: never re-run, but the session keeps nothing.
    'SAVEPOINT "s140_x1"',
    'RELEASE SAVEPOINT "s140_x1"',
    'ROLLBACK TO SAVEPOINT "s140_x1"',
    "BEGIN",
    "COMMIT",
    "SELECT * FROM shop_order FOR UPDATE",
    "SELECT * FROM shop_order FOR NO KEY UPDATE SKIP LOCKED",
    "SELECT * FROM shop_order FOR SHARE",
    "select * from shop_order for key share",
    "WITH x AS (SELECT 1) SELECT * FROM x",
    "SELECT * FROM pg_settings",
    "SELECT count(*) FROM pg_stat_activity",
    "EXPLAIN SELECT 1",
]


@pytest.mark.parametrize("sql", PLAINS)
def test_plain_statements_leave_the_session_unchanged(sql) -> None:
    assert classify(sql).kind is Kind.PLAIN


OTHERS = [
    # Creating, two statements, a write hidden in a CTE.
    "SELECT * INTO backup FROM shop_order",
    "SELECT 1; DELETE FROM shop_order",
    "WITH gone AS (DELETE FROM shop_order RETURNING *) SELECT * FROM gone",
    "EXPLAIN ANALYZE SELECT 1",
    b"SELECT 1",
    None,
    # Calls with side effects, or of a function nobody can classify from the text.
    "SELECT nextval('shop_order_id_seq')",
    "SELECT setval('shop_order_id_seq', 10)",
    "SELECT pg_advisory_lock(1)",
    "SELECT set_config('work_mem', '1GB', false)",
    "SELECT txid_current()",
    "SELECT lo_create(0)",
    "SELECT dblink_exec('...')",
    "SELECT pg_notify('chan', 'x')",
    "SELECT audit_read(id) FROM shop_order",  # an unqualified extension function
    "SELECT * FROM audited_rows()",  # a set-returning function of your own
    "SELECT public.my_function(1)",
    "SELECT cron.schedule('* * * * *', 'DELETE FROM t')",
    "SELECT \"nextval\"('s')",
    "SELECT pg_catalog.\"setval\"('s', 1)",
    "SELECT nextval/**/('s')",
    "SELECT U&\"\\006Eextval\"('s')",
    "SELECT lowrite(1, 'x')",
    "SELECT setseed(0.5)",
    "SELECT query_to_xml(%s, true, false, '')",
    # The session's settings, written through a catalog view.
    "UPDATE pg_settings SET setting = 's1' WHERE name = 'search_path'",
    "UPDATE pg_catalog.pg_settings SET setting = 'x' WHERE name = 'y'",
    # Statements that change the session.
    "SET search_path TO tenant_1",
    "SET ROLE reporting",
    "CREATE TEMPORARY TABLE scratch (id int)",
    "PREPARE q AS SELECT 1",
    "LISTEN orders",
    "CALL refresh_totals()",
    "INSERT INTO t VALUES (1); SET search_path TO x",
    "UPDATE t SET x = pg_advisory_lock(1)",
    "INSERT INTO t (x) VALUES (set_config('a', 'b', false))",
    # What the scanner cannot read.
    "SELECT 'unterminated",
    "SELECT $$ never closed",
    "SELECT 1 /* never closed",
]


@pytest.mark.parametrize("sql", OTHERS)
def test_everything_else_may_change_the_session(sql) -> None:
    assert classify(sql).kind is Kind.OTHER


def orm_statements() -> list[str]:
    from django.db import connection
    from django.db.models import Count, Exists, OuterRef, Sum
    from django.db.models.functions import ExtractYear, Upper

    from shop.models import Account, Order

    querysets = [
        Order.objects.filter(key="a"),
        Order.objects.filter(key__in=["a", "b"]).order_by("-created_at")[:10],
        Order.objects.values("key").annotate(n=Count("id"), total=Sum("amount")),
        Order.objects.annotate(upper=Upper("key")).exclude(amount__gt=5),
        Order.objects.filter(Exists(Account.objects.filter(name=OuterRef("key")))),
        Account.objects.filter(id__in=Order.objects.values("amount")),
        Order.objects.annotate(year=ExtractYear("created_at")).filter(year=2026),
        Order.objects.select_related().distinct().filter(key__icontains="x"),
    ]
    return [qs.query.get_compiler(connection=connection).as_sql()[0] for qs in querysets]


def test_what_the_orm_sends_for_reads_is_a_read() -> None:
    for sql in orm_statements():
        assert classify(sql).kind is Kind.READ, sql


def test_the_classification_is_cached_by_text() -> None:
    sql = "SELECT id FROM shop_order WHERE id = %s -- cached"
    assert classify(sql) is classify(
        "".join(["SELECT id FROM shop_order ", "WHERE id = %s -- cached"])
    )


@pytest.fixture
def empty_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache is the process's: start this test with an empty one, and give it back."""
    monkeypatch.setattr(statements, "_cache", {})
    monkeypatch.setattr(statements, "_cache_bytes", 0)


def insert_of(rows: int) -> str:
    """What bulk_create() sends for ``rows`` rows of two fields."""
    return 'INSERT INTO "shop_order" ("key", "amount") VALUES ' + ", ".join(["(%s, %s)"] * rows)


def test_a_text_too_long_to_scan_is_other_and_not_kept(empty_cache) -> None:
    """Not read at all: a scan would find a WRITE, the length alone makes it OTHER."""
    for sql in (insert_of(65_000), "SELECT 1" + " " * statements.MAX_SCANNED):
        assert len(sql) > statements.MAX_SCANNED
        assert classify(sql).kind is Kind.OTHER
        assert statements._cache == {}
    assert statements._classify(insert_of(2000)).kind is Kind.PLAIN  # what a scan says
    longest = insert_of((statements.MAX_SCANNED - len(insert_of(1))) // 10 + 1)
    assert len(longest) <= statements.MAX_SCANNED < len(longest) + 10
    assert classify(longest).kind is Kind.PLAIN
    assert list(statements._cache) == [longest]


def in_query(values: int) -> str:
    return (
        'SELECT "shop_order"."id", "shop_order"."key" FROM "shop_order" '
        f'WHERE "shop_order"."id" IN ({", ".join(["%s"] * values)})'
    )


def test_the_cache_stays_within_its_memory_bound(
    empty_cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Distinct IN (...) lists, each kept: their texts never take more than CACHE_BYTES."""
    monkeypatch.setattr(statements, "CACHE_BYTES", 32 * 1024)
    kept = 0
    for values in range(1, 301):
        sql = in_query(values)
        assert classify(sql).kind is Kind.READ
        kept += sys.getsizeof(sql)
        assert statements._cache_bytes == sum(sys.getsizeof(s) for s in statements._cache)
        assert statements._cache_bytes <= statements.CACHE_BYTES
        assert sql in statements._cache  # the latest is always kept
    assert kept > 4 * statements.CACHE_BYTES  # so the bound was met, and held


def test_the_cache_stays_within_its_number_bound(
    empty_cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(statements, "CACHE_ENTRIES", 10)
    for values in range(1, 50):
        classify(in_query(values))
        assert 1 <= len(statements._cache) <= 10


@pytest.mark.skipif(get_driver().name != "psycopg2", reason="AsIs is psycopg2's type")
def test_raw_sql_parameters_psycopg2_asis() -> None:
    from psycopg2.extensions import AsIs

    raw = get_driver().raw_sql_type
    assert not has_raw_sql_param(None, raw)
    assert not has_raw_sql_param(["a", 1, None], raw)
    assert not has_raw_sql_param({"key": "a"}, raw)
    assert has_raw_sql_param([1, AsIs("nextval('s')")], raw)
    assert has_raw_sql_param({"n": AsIs("1")}, raw)


@pytest.mark.skipif(get_driver().name != "psycopg", reason="psycopg 3's adaptation")
def test_psycopg3_refuses_sql_as_a_parameter_so_none_is_raw() -> None:
    import psycopg
    from psycopg import adapt, sql

    with pytest.raises(psycopg.ProgrammingError, match="cannot adapt type 'SQL'"):
        adapt.Transformer().as_literal(sql.SQL("nextval('s')"))
    assert get_driver().raw_sql_type is None
    assert not get_driver().is_raw_sql(sql.SQL("x"))
