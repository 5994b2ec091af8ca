"""One driver variant of the benchmark, in a process of its own (Django picks one driver
per process): ``python -m tests.benchmarks.run --lab DIR --variant psycopg+pool``.

Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

from django_pg_failover.lab import Cluster

from . import django_setup, read_your_writes, scenarios
from .scenarios import SIDES

#: role_check="query" beside stock: one round trip more per new connection.
QUERY_SIDES = ("stock", "ours_query")
#: Each round of the steady-state scenarios is this many short slices per side.
SLICES_PER_ROUND = 20


def run(cluster: Cluster, pool: bool, args: argparse.Namespace) -> dict:
    from django.db import connections

    from django_pg_failover.drivers import get_driver
    from shop.models import Order

    result: dict = {"driver": get_driver().label(), "pool": pool}
    pk = Order.objects.using("ours").get(key="seed").pk
    say = lambda text: print(f"  {text}", file=sys.stderr, flush=True)  # noqa: E731

    slices = args.rounds * SLICES_PER_ROUND
    if not args.connects_only:  # (--connects-only: the connect scenarios alone)
        say("a raw cursor's execute + fetchone, retry_reads off and on")
        times = scenarios.time_slices(
            {s: scenarios.cursor_queries(s, 200) for s in (*SIDES, "ours_reads")}, slices
        )
        result["cursor_query"] = scenarios.compare(times)
        result["cursor_query_retry_reads"] = scenarios.compare(times, ours="ours_reads")
        say("ORM get(), retry_reads off and on")
        times = scenarios.time_slices(
            {s: scenarios.orm_queries(s, pk, 100) for s in (*SIDES, "ours_reads")}, slices
        )
        result["orm_get"] = scenarios.compare(times)
        result["orm_get_retry_reads"] = scenarios.compare(times, ours="ours_reads")
        say("1000-row INSERT in an atomic block, retry_reads off and on")
        inserts = {s: scenarios.bulk_insert_in_atomic(s, 1000) for s in (*SIDES, "ours_reads")}
        times = scenarios.time_slices(inserts, slices // 4)
        result["bulk_insert"] = scenarios.compare(times)
        result["bulk_insert_reads_vs_off"] = scenarios.compare(
            times, ours="ours_reads", stock="ours"
        )
    say("ensure_connection() + close()")
    result["connect_close"] = scenarios.compare(
        scenarios.time_slices({s: scenarios.connect_close(s, 5) for s in SIDES}, slices)
    )
    say("connect + SELECT 1 + close")
    result["connect"] = scenarios.compare(
        scenarios.time_slices({s: scenarios.connects(s, 5) for s in SIDES}, slices)
    )
    say("connect + SELECT 1 + close, role_check='query' (one round trip more per connection)")
    result["connect_role_check_query"] = scenarios.compare(
        scenarios.time_slices({s: scenarios.connects(s, 5) for s in QUERY_SIDES}, slices),
        ours="ours_query",
    )
    if args.connects_only:
        return result
    if not pool:
        say("request cycle with a persistent connection (the liveness check)")
        for side, database in (("stock", django_setup.stock), ("ours", django_setup.ours)):
            django_setup.set_alias(side, {**database(cluster), "CONN_MAX_AGE": 600})
        result["request_cycle"] = scenarios.compare(
            scenarios.time_slices({s: scenarios.requests(s, pk, 50) for s in SIDES}, slices)
        )
        result["liveness_check_s"] = scenarios.liveness_check_cost("ours")
    connections.close_all()

    say("read_your_writes: a read-mostly load with writes, against a plain replica alias")
    result["read_your_writes"] = read_your_writes.run(cluster, pool, pk, slices)
    connections.close_all()

    say("hung first host, 20 new connections")
    result["hung_first_host"] = scenarios.hung_first_host(cluster, 20, pool)
    say(f"a host frozen for {args.frozen_seconds:g}s listed first while requests run")
    result["frozen_host"] = scenarios.frozen_host_steady(cluster, args.frozen_seconds, pool)
    for threads in (1, 4):
        say(f"failover under load, {threads} thread(s), {args.failovers} failovers")
        picture = (
            Path(args.picture_dir) / f"bench-failover-{args.variant.replace('+', '-')}"
            if args.picture_dir and threads == 4
            else None
        )
        result[f"failover_{threads}"] = scenarios.failovers(
            cluster, threads, args.failovers, pool, picture
        )
    if not pool:
        say("persistent connections through a failover, 4 threads, no health checks")
        result["persistent_failover"] = scenarios.persistent_failover(cluster, 4)
        say(f"{args.stampede} threads waiting through a {args.outage:g}s failover")
        result["stampede"] = scenarios.stampede(cluster, args.stampede, args.outage)
    cluster.reset()
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.run")
    parser.add_argument("--lab", required=True)
    parser.add_argument("--variant", choices=("psycopg2", "psycopg", "psycopg+pool"))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--frozen-seconds", type=float, default=60.0)
    parser.add_argument("--stampede", type=int, default=200)
    parser.add_argument("--outage", type=float, default=3.0)
    parser.add_argument("--rss-only", choices=SIDES, help="peak RSS of one backend's work")
    parser.add_argument("--picture-dir", help="draw the first 4-thread failover there")
    parser.add_argument("--connects-only", action="store_true", help="the connect scenarios only")
    args = parser.parse_args()
    cluster = Cluster.load(args.lab)
    pool = args.variant.endswith("+pool")
    if args.rss_only:
        database = (django_setup.ours if args.rss_only == "ours" else django_setup.stock)(
            cluster, pool=pool
        )
        django_setup.configure({"ours": database, "stock": database})
        from shop.models import Order

        pk = Order.objects.using("ours").get(key="seed").pk
        scenarios.orm_queries("ours", pk, 2000)()
        scenarios.connects("ours", 50)()
        print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
        return 0
    django_setup.configure(
        {
            "ours": django_setup.ours(cluster, pool=pool),
            "ours_reads": django_setup.ours(cluster, pool=pool, retry_reads=True),
            "ours_query": django_setup.ours(cluster, pool=pool, role_check="query"),
            "stock": django_setup.stock(cluster, pool=pool),
        }
    )
    print(json.dumps(run(cluster, pool, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
