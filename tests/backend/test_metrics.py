"""OpenTelemetry metrics (docs/metrics.rst) through real faults, read by the real SDK.

The SDK's in-memory reader (tests/backend/otel.py) collects what the backend
recorded for each test's own alias; the Prometheus exporter's HTTP server is
scraped for the recipe of the docs. The healthy path's budgets are counted
again with the MeterProvider set and a pool observed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from django.db import Error, OperationalError, connections
from django.test import Client

from django_pg_failover import metrics
from django_pg_failover.lab import Cluster
from django_pg_failover.lab.cluster import free_port
from django_pg_failover.lab.system import wait_for
from shop.models import Order
from tests.markers import needs_pool

from . import otel
from .test_healthy_path import (
    CONNECT_BUDGET,
    POOL_CHECKOUT_BUDGET,
    QUERY_BUDGET,
    aliases,  # noqa: F401 - the fixture
    connect_work,
    python_calls,
    query_work,
)
from .units import create, in_request, port_of

pytestmark = pytest.mark.timeout(120)

LOST = "django_pg_failover.connections.lost"
FAILED = "django_pg_failover.connect.attempts.failed"
FAILOVERS = "django_pg_failover.failovers"
FAILOVER_TIME = "django_pg_failover.failover.duration"
WAITING = "django_pg_failover.connections.waiting"
RETRIED = "django_pg_failover.reads.retried"
QUICK = {"failover": {"retry_timeout": 15, "backoff_max": 0.1, "probe_interval": 0.05}}


@pytest.fixture(autouse=True)
def meter_provider() -> None:
    otel.reader()
    metrics.forget_outages()


def test_the_healthy_path_keeps_its_budgets_with_a_meter_provider(
    cluster: Cluster,
    make_alias,
    aliases: dict[str, str],  # noqa: F811
) -> None:
    # The recorder is loaded (an event of this process), and the SDK's provider set.
    assert metrics.recorder() is not None
    works = {side: query_work(alias) for side, alias in aliases.items()}
    query = {side: python_calls(work[0]) for side, work in works.items()}
    assert query["ours"] - query["stock"] <= QUERY_BUDGET, query
    connect = {
        side: python_calls(connect_work(aliases[side]), times=20) for side in ("stock", "ours")
    }
    assert connect["ours"] - connect["stock"] <= CONNECT_BUDGET, connect
    print(f"with a MeterProvider: calls per query {query}, per connect {connect}")


@needs_pool
def test_a_pool_checkout_keeps_its_budget_with_a_meter_provider(
    cluster: Cluster, make_alias
) -> None:
    pool = {"pool": {"min_size": 1, "max_size": 2}}
    ours = make_alias(OPTIONS=pool)
    works = {
        "stock": connect_work(make_alias(stock=True, OPTIONS=pool)),
        "ours": connect_work(ours),
    }
    calls = {side: python_calls(work, times=20) for side, work in works.items()}
    print(f"with a MeterProvider: calls per checkout and return {calls}")
    assert connections[ours].pool.times is not None  # the checkouts were timed
    assert calls["ours"] - calls["stock"] <= POOL_CHECKOUT_BUDGET, calls
    assert otel.total(otel.points(ours), "db.client.connection.use_time") >= 20


def test_a_failover_is_counted_with_its_losses_failures_waits_and_time(
    cluster: Cluster, make_alias
) -> None:
    alias = make_alias(OPTIONS=QUICK)
    old = cluster.primary
    waiting_seen: list[float] = []

    def promote_once_a_thread_waits() -> None:
        # The waiting thread shows in the observed gauge before the new primary exists.
        wait_for(lambda: otel.total(otel.points(alias), WAITING) >= 1, 10, "a waiting thread")
        waiting_seen.append(otel.total(otel.points(alias), WAITING))
        cluster.promote()

    def request() -> None:
        create(alias, "before")
        cluster.crash(old)
        promoter = threading.Thread(target=promote_once_a_thread_waits)
        promoter.start()
        try:
            with pytest.raises(OperationalError):
                create(alias, "lost")
            create(alias, "after")  # waits for the new primary
        finally:
            promoter.join(30)

    began = time.monotonic()
    in_request(request)
    took = time.monotonic() - began
    new = cluster.primary
    found = otel.points(alias)
    assert waiting_seen
    assert waiting_seen[0] >= 1
    assert otel.total(found, WAITING) == 0  # nobody waits now
    assert otel.total(found, LOST, server_port=old.port, django_pg_failover_cause="crash") == 1
    assert (
        otel.total(found, FAILED, server_port=old.port, django_pg_failover_verdict="unreachable")
        >= 1
    )
    assert otel.total(found, FAILOVERS) == 1
    assert otel.total(found, FAILOVERS, server_port=new.port, server_address="127.0.0.1") == 1
    (duration,) = found[FAILOVER_TIME]
    assert duration.count == 1
    assert 0 < duration.sum <= took
    # Another request on the new primary: no second failover.
    in_request(lambda: create(alias, "later"))
    assert otel.total(otel.points(alias), FAILOVERS) == 1


def test_a_lost_read_re_run_is_counted(cluster: Cluster, make_alias) -> None:
    alias = make_alias(OPTIONS={"failover": {**QUICK["failover"], "retry_reads": True}})
    Order.objects.using(alias).create(key="read-me")
    connections[alias].ensure_connection()
    old = cluster.primary
    cluster.wait_replayed()
    cluster.failover(fault="crash")
    assert Order.objects.using(alias).filter(key="read-me").count() == 1
    found = otel.points(alias)
    assert otel.total(found, RETRIED, django_pg_failover_outcome="rerun") == 1
    assert otel.total(found, LOST, server_port=old.port, django_pg_failover_cause="crash") == 1
    assert otel.total(found, FAILOVERS, server_port=cluster.primary.port) == 1


def test_a_demotion_is_a_loss_of_its_own_cause(cluster: Cluster, make_alias) -> None:
    alias = make_alias(OPTIONS=QUICK)
    old = cluster.primary
    create(alias, "on-old")
    cluster.wait_replayed()
    cluster.make_read_only(old)
    new = cluster.promote()
    with pytest.raises(Error):
        create(alias, "refused")
    create(alias, "on-new")
    found = otel.points(alias)
    assert otel.total(found, LOST, server_port=old.port, django_pg_failover_cause="demoted") == 1
    assert otel.total(found, FAILOVERS, server_port=new.port) == 1


def test_a_call_given_up_on_a_frozen_server_is_a_stalled_loss(cluster: Cluster, make_alias) -> None:
    alias = make_alias(
        OPTIONS={"connect_timeout": 2, "failover": {**QUICK["failover"], "stall_timeout": 1.0}}
    )
    create(alias)
    old = cluster.primary

    def freeze_and_promote() -> None:
        # The call is under way (a 30 s sleep) when the server and its sessions freeze.
        wait_for(
            lambda: old.query(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30%'"
            )[0][0],
            10,
            "the call",
        )
        cluster.hang(old)
        cluster.promote()

    fault = threading.Thread(target=freeze_and_promote)
    fault.start()
    try:
        with pytest.raises(OperationalError), connections[alias].cursor() as cursor:
            cursor.execute("SELECT pg_sleep(30)")
    finally:
        fault.join(30)
    create(alias)
    found = otel.points(alias)
    assert otel.total(found, LOST, server_port=old.port, django_pg_failover_cause="stalled") == 1
    assert otel.total(found, FAILOVERS, server_port=cluster.primary.port) == 1


@needs_pool
def test_the_pool_is_observed_as_the_semantic_conventions_say(cluster: Cluster, make_alias) -> None:
    alias = make_alias(OPTIONS={**QUICK, "pool": {"min_size": 2, "max_size": 4, "timeout": 5}})
    pool = connections[alias].pool
    # Opened first: a request that came while the pool opens would make it grow.
    pool.open(wait=True, timeout=10)
    for _ in range(3):
        in_request(lambda: create(alias))
    held = pool.getconn()  # one used
    try:
        found = otel.points(alias)
        size = pool.get_stats()["pool_size"]
        count = {
            p.attributes["db.client.connection.state"]: p.value
            for p in found["db.client.connection.count"]
        }
        assert count["used"] == 1
        assert count["idle"] + count["used"] == size >= 2
        assert otel.total(found, "db.client.connection.max") == 4
        assert otel.total(found, "db.client.connection.idle.max") == 4
        assert otel.total(found, "db.client.connection.idle.min") == 2
        assert otel.total(found, "db.client.connection.pending_requests") == 0
        # Three requests' checkouts given back, each waited for and used a while.
        (wait,) = found["db.client.connection.wait_time"]
        (use,) = found["db.client.connection.use_time"]
        assert wait.count == use.count == 3
        assert use.sum > 0
        assert wait.sum >= 0
        (create_time,) = found["db.client.connection.create_time"]
        assert create_time.count == size == 2
        assert create_time.sum > 0
    finally:
        pool.putconn(held)
    # A request that cannot get a connection in time counts as a timeout.
    from psycopg_pool import PoolTimeout  # (psycopg 3 only)

    small = make_alias(OPTIONS={**QUICK, "pool": {"min_size": 1, "max_size": 1, "timeout": 5}})
    small_pool = connections[small].pool
    small_pool.open(wait=True, timeout=10)
    held = small_pool.getconn()
    try:
        with pytest.raises(PoolTimeout):
            small_pool.getconn(timeout=0.1)
    finally:
        small_pool.putconn(held)
    assert otel.total(otel.points(small), "db.client.connection.timeouts") == 1


@needs_pool
def test_a_pool_failover_counts_idle_connections_lost_and_one_failover(
    cluster: Cluster, make_alias
) -> None:
    alias = make_alias(OPTIONS={**QUICK, "pool": {"min_size": 2, "max_size": 2}})
    in_request(lambda: create(alias))
    connections[alias].pool.wait(timeout=10)
    old = cluster.primary
    cluster.wait_replayed()
    cluster.failover(fault="crash")
    assert in_request(lambda: [create(alias, "after"), port_of(alias)][1]) == cluster.primary.port
    found = otel.points(alias)
    # The idle connection handed out first was found closed (its siblings replaced).
    assert (
        otel.total(found, LOST, server_port=old.port, django_pg_failover_cause="closed_while_idle")
        >= 1
    )
    assert otel.total(found, FAILOVERS, server_port=cluster.primary.port) == 1
    assert found[FAILOVER_TIME][0].sum > 0


_PROBE = """
import sys
{hide}
import django
from django.conf import settings
settings.configure(DATABASES={{"default": {database!r}}})
django.setup()
from django.db import connection
from django_pg_failover import metrics
with connection.cursor() as cursor:
    cursor.execute("SELECT 1")
    assert cursor.fetchone() == (1,)
connection.close()
print(sys.modules.get("opentelemetry") is not None, metrics._recorder is metrics._UNLOADED)
print(metrics.recorder() is not None)
"""


@pytest.mark.parametrize("installed", [True, False], ids=["installed", "not-installed"])
def test_a_healthy_process_never_imports_opentelemetry(cluster: Cluster, installed: bool) -> None:
    hide = "" if installed else "sys.modules['opentelemetry'] = None  # as if not installed"
    code = _PROBE.format(hide=hide, database=cluster.django_database())
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ
    )
    assert result.returncode == 0, result.stderr
    imported, unloaded, recorder = result.stdout.split()
    assert (imported, unloaded) == ("False", "True")  # a query and a connect: nothing loaded
    # Asked for (at the first event), the recorder is there only with the API.
    assert recorder == str(installed)


def test_prometheus_scrapes_a_request_of_the_testproject(cluster: Cluster) -> None:
    pytest.importorskip("opentelemetry.exporter.prometheus")
    from prometheus_client import start_http_server

    assert otel.prometheus  # the exporter's reader is on the process's provider
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1")
    try:
        connections.close_all()  # the test's own connections only
        client = Client()
        assert client.get("/orders/").status_code == 200
        # What Django's handler does at the end of a request (its test client does not).
        connections.close_all()
        old = cluster.primary
        cluster.failover(fault="crash")
        response = client.get("/orders/")  # the first attempt fails on the old primary
        assert response.status_code == 200
        assert response.json()["port"] == cluster.primary.port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as scrape:
            text = scrape.read().decode()
    finally:
        server.shutdown()
        thread.join(10)
    lines = [
        line
        for line in text.splitlines()
        if line.startswith("django_pg_failover_connect_attempts_failed")
        and 'db_client_connection_pool_name="default"' in line
        and f'server_port="{old.port}"' in line
    ]
    assert lines, text[-3000:]
    assert float(lines[0].rsplit(" ", 1)[1]) >= 1
