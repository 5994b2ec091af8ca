"""Which SQL the opt-in read retry may re-run (pure logic)."""

from __future__ import annotations

import pytest

from django_pg_failover.reads import is_retryable_read


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
