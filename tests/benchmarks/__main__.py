"""Benchmark django_pg_failover against Django's stock PostgreSQL backend on a real lab.

    python -m tests.benchmarks [--rounds 15] [--pg-version 18] [--no-patroni | --only-patroni]

Both backends run in the same process against the same lab, interleaved
(the side that runs first alternates every round). Loopback timings here are
noisy, so times are compared as ratios (ours / stock): for the steady-state
scenarios, the ratio of each side's best round (as timeit reports) with the
median and spread of the per-round ratios beside it. The last scenario runs
both under load on a Patroni cluster whose leader's node is killed, and sets
each side's recovery next to Patroni's own failover time from the same run.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from django_pg_failover.lab import Cluster, PatroniCluster, find_install

from . import django_setup

SIDES = ("stock", "ours")


# -- steady state -----------------------------------------------------------------------


def time_rounds(work: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    for n in range(rounds):
        order = SIDES if n % 2 == 0 else SIDES[::-1]
        for side in order:
            started = time.perf_counter()
            work[side]()
            times[side].append(time.perf_counter() - started)
    return times


def summarise(times: dict[str, list[float]]) -> dict[str, float]:
    per_round = [o / s for o, s in zip(times["ours"], times["stock"], strict=True)]
    return {
        "stock": min(times["stock"]),
        "ours": min(times["ours"]),
        "ratio": min(times["ours"]) / min(times["stock"]),
        "median": statistics.median(per_round),
        "low": min(per_round),
        "high": max(per_round),
    }


def orm_queries(alias: str, pk: int, count: int) -> Callable[[], None]:
    from shop.models import Order

    manager = Order.objects.using(alias)

    def run() -> None:
        for _ in range(count):
            manager.get(pk=pk)

    return run


def connects(alias: str, count: int) -> Callable[[], None]:
    from django.db import connections

    def run() -> None:
        for _ in range(count):
            connection = connections[alias]
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            connection.close()

    return run


# -- a hung first host ------------------------------------------------------------------------


def hung_first_host(cluster: Cluster, count: int) -> dict[str, float]:
    from django.db import connections

    from django_pg_failover.status import host_status

    hung, primary, other = cluster.standbys[0], cluster.primary, cluster.standbys[1]
    order = [hung, primary, other]
    django_setup.set_alias("ours", django_setup.ours(cluster, order))
    django_setup.set_alias("stock", django_setup.stock(cluster, order))
    host_status.clear()
    cluster.hang(hung, include_sessions=False)
    totals = {}
    try:
        for side in SIDES[::-1]:
            started = time.perf_counter()
            for _ in range(count):
                connection = connections[side]
                connection.ensure_connection()
                assert connection.connection.info.port == primary.port
                connection.close()
            totals[side] = time.perf_counter() - started
    finally:
        cluster.resume(hung)
    return {**totals, "ratio": totals["ours"] / totals["stock"]}


# -- failover under load --------------------------------------------------------------------


@dataclass
class Unit:
    started: float
    ended: float
    ok: bool
    write_done: float | None = None


@dataclass
class Load:
    alias: str
    units: list[Unit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def worker(self, stop: threading.Event) -> None:
        from django.core.signals import request_finished, request_started
        from django.db import Error

        from shop.models import Order

        orders = Order.objects.using(self.alias)
        while not stop.is_set():
            started = time.monotonic()
            write_done = None
            request_started.send(sender=None)
            try:
                orders.filter(key="seed").exists()
                orders.count()
                orders.create(key=uuid.uuid4().hex)
                write_done = time.monotonic()
                ok = True
            except Error:
                ok = False
            finally:
                request_finished.send(sender=None)
            with self.lock:
                self.units.append(Unit(started, time.monotonic(), ok, write_done))
            time.sleep(0.01)  # think time, the same for both sides


def start_load(threads: int) -> tuple[dict[str, Load], threading.Event, list[threading.Thread]]:
    """``threads`` workers per side, started."""
    loads = {side: Load(side) for side in SIDES}
    stop = threading.Event()
    workers = [
        threading.Thread(target=loads[side].worker, args=(stop,))
        for side in SIDES
        for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    return loads, stop, workers


def failover_under_load(cluster: Cluster, threads: int, promote_delay: float) -> dict:
    django_setup.set_alias("ours", django_setup.ours(cluster))
    django_setup.set_alias("stock", django_setup.stock(cluster))
    loads, stop, workers = start_load(threads)
    time.sleep(1.0)
    cluster.crash(cluster.primary)
    crashed = time.monotonic()  # units that began before this may have reached the old primary
    time.sleep(promote_delay)
    cluster.promote()
    promoted = time.monotonic()
    time.sleep(2.0)
    stop.set()
    for worker in workers:
        worker.join(60)
    cluster.follow()

    result = {}
    for side, load in loads.items():
        after = [u for u in load.units if u.started >= crashed]
        in_flight = [u for u in load.units if u.started < crashed < u.ended]
        writes = [u.write_done for u in load.units if u.write_done and u.write_done >= promoted]
        result[side] = {
            "units": len(load.units),
            "failed_after_crash": sum(not u.ok for u in after),
            "failed_in_flight": sum(not u.ok for u in in_flight),
            "first_write_after_promotion_s": (min(writes) - promoted) if writes else None,
        }
    return result


# -- failover under Patroni ----------------------------------------------------------------


def patroni_failover_under_load(install, threads: int, retry_timeout: float | None) -> dict:
    """Kill the leader's node (agent and PostgreSQL) under load; Patroni picks the new leader.

    Ours keeps trying to connect for Patroni's ttl + loop_wait + a margin (by
    default), as docs/patroni.rst says to set it; synchronous_mode is on, as
    it also says.
    """
    from django.core.management import call_command
    from django.db import connections

    with PatroniCluster.create(install=install, synchronous=True) as cluster:
        retry_timeout = retry_timeout or cluster.ttl + cluster.loop_wait + 9
        options = {"connect_timeout": django_setup.CONNECT_TIMEOUT}
        django_setup.set_alias(
            "ours",
            cluster.django_database(
                OPTIONS={**options, "failover": {"retry_timeout": retry_timeout}}
            ),
        )
        django_setup.set_alias("stock", cluster.django_database(stock=True, OPTIONS=options))
        call_command("migrate", database="ours", verbosity=0)
        connections.close_all()
        with cluster.watch() as watch:
            loads, stop, workers = start_load(threads)
            time.sleep(1.0)  # steady traffic first
            old = cluster.kill_node()
            killed = time.monotonic()
            cluster.wait_leader(other_than=old, timeout=cluster.ttl * 3)
            time.sleep(2.0)
            stop.set()
            for worker in workers:
                worker.join(90)
        change = watch.new_leader_after(killed, old.name)
        connections.close_all()

    new_leader = change.writable
    result: dict = {"patroni_failover_s": new_leader - killed, "retry_timeout": retry_timeout}
    for side, load in loads.items():
        writes = [u.write_done for u in load.units if u.write_done and u.write_done >= new_leader]
        first = (min(writes) - new_leader) if writes else None
        result[side] = {
            "units": len(load.units),
            "failed_after_kill": sum(not u.ok for u in load.units if u.started >= killed),
            "failed_in_flight": sum(not u.ok for u in load.units if u.started < killed < u.ended),
            "first_write_after_new_leader_s": first,
            # Kill to first write, as a multiple of Patroni's own failover time.
            "recovery_over_patroni": (
                (first + new_leader - killed) / (new_leader - killed) if writes else None
            ),
        }
    return result


# -- memory ------------------------------------------------------------------------------


def peak_rss(side: str, cluster: Cluster) -> float:
    """Peak RSS (MiB) of a fresh process running scenarios 1 and 2 on one backend."""
    probe = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks", "--rss-probe", side, "--lab", str(cluster.root)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    return float(probe.stdout.strip().splitlines()[-1])


def rss_probe(side: str, lab: str) -> None:
    cluster = Cluster.load(lab)
    database = django_setup.ours(cluster) if side == "ours" else django_setup.stock(cluster)
    django_setup.configure({"ours": database, "stock": database})
    from shop.models import Order

    pk = Order.objects.using("ours").get(key="seed").pk
    orm_queries("ours", pk, 2000)()
    connects("ours", 50)()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


# -- the run -------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--pg-version", type=int)
    parser.add_argument("--threads", type=int, default=4)
    patroni = parser.add_mutually_exclusive_group()
    patroni.add_argument("--no-patroni", action="store_true", help="skip the Patroni scenario")
    patroni.add_argument(
        "--only-patroni", action="store_true", help="run the Patroni scenario only"
    )
    parser.add_argument(
        "--patroni-retry-timeout",
        type=float,
        help="ours' retry_timeout on Patroni (default: ttl + loop_wait + 9 s)",
    )
    parser.add_argument("--rss-probe", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--lab", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_probe:
        rss_probe(args.rss_probe, args.lab)
        return 0

    install = find_install(args.pg_version)
    if args.only_patroni:
        return patroni_only(install, args.threads, args.patroni_retry_timeout)
    steps = 5 if args.no_patroni else 6
    print(f"PostgreSQL {install.major} ({install.source}); building the lab...", flush=True)
    with Cluster.create(install=install) as cluster:
        django_setup.configure(
            {"ours": django_setup.ours(cluster), "stock": django_setup.stock(cluster)}
        )
        from django.core.management import call_command
        from django.db import connections

        from shop.models import Order

        call_command("migrate", database="ours", verbosity=0)
        pk = Order.objects.using("ours").create(key="seed").pk
        cluster.wait_replayed()
        connections.close_all()
        cluster.snapshot()  # restarts the servers; reset() comes back to this state

        print(f"1/{steps} ORM get() x2000 ...", flush=True)
        queries = summarise(time_rounds({s: orm_queries(s, pk, 2000) for s in SIDES}, args.rounds))
        print(f"2/{steps} connect + query + close x100 ...", flush=True)
        connect = summarise(time_rounds({s: connects(s, 100) for s in SIDES}, args.rounds))
        print(f"3/{steps} hung first host, 20 new connections ...", flush=True)
        hung = hung_first_host(cluster, 20)
        print(f"4/{steps} failover under load ...", flush=True)
        cluster.reset()
        failover = failover_under_load(cluster, args.threads, promote_delay=1.0)
        cluster.reset()
        print(f"5/{steps} peak RSS ...", flush=True)
        rss = {side: peak_rss(side, cluster) for side in SIDES}
    rss["ratio"] = rss["ours"] / rss["stock"]
    patroni = None
    if not args.no_patroni:
        print(f"6/{steps} Patroni: the leader's node killed under load ...", flush=True)
        patroni = patroni_failover_under_load(install, args.threads, args.patroni_retry_timeout)

    print_table(queries, connect, hung, failover, rss)
    if patroni:
        print_patroni(patroni)
    print(
        json.dumps(
            {
                "orm_get_ratio": round(queries["ratio"], 3),
                "connect_ratio": round(connect["ratio"], 3),
                "hung_first_host_ratio": round(hung["ratio"], 3),
                "peak_rss_ratio": round(rss["ratio"], 3),
                "failover": failover,
                "patroni_failover": patroni,
                "postgresql": install.major,
            }
        )
    )
    return 0


def patroni_only(install, threads: int, retry_timeout: float | None) -> int:
    print(f"PostgreSQL {install.major} ({install.source}); Patroni, etcd...", flush=True)
    django_setup.configure({"ours": {}, "stock": {}})
    patroni = patroni_failover_under_load(install, threads, retry_timeout)
    print_patroni(patroni)
    print(json.dumps({"patroni_failover": patroni, "postgresql": install.major}))
    return 0


def print_patroni(result: dict) -> None:
    def row(name: str, stock: str, ours: str) -> None:
        print(f"{name:<52}{stock:>12}{ours:>12}")

    def value(v: object) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    took, retry = result["patroni_failover_s"], result["retry_timeout"]
    print(
        f"Patroni: the leader's node killed (Patroni's own failover took {took:.2f}s; "
        f"ours with retry_timeout {retry:g}s)"
    )
    row("", "stock", "ours")
    for key, label in (
        ("units", "  units run"),
        ("failed_after_kill", "  failed, started after the kill"),
        ("failed_in_flight", "  failed, in flight at the kill"),
        ("first_write_after_new_leader_s", "  new leader takes writes -> first write (s)"),
        ("recovery_over_patroni", "  kill -> first write, / Patroni's failover time"),
    ):
        row(label, *(value(result[side][key]) for side in SIDES))
    print()


def print_table(queries, connect, hung, failover, rss) -> None:
    def row(name: str, stock: str, ours: str, ratio: str) -> None:
        print(f"{name:<44}{stock:>12}{ours:>12}  {ratio}")

    print()
    row("scenario", "stock", "ours", "ours/stock")
    for name, result in (
        ("1 ORM get() x2000, one connection (best)", queries),
        ("2 connect + SELECT 1 + close x100 (best)", connect),
    ):
        row(
            name,
            f"{result['stock']:.3f}s",
            f"{result['ours']:.3f}s",
            f"{result['ratio']:.3f}  (per round: median {result['median']:.3f}, "
            f"{result['low']:.2f}-{result['high']:.2f})",
        )
    row(
        "3 hung first host, 20 new connections",
        f"{hung['stock']:.2f}s",
        f"{hung['ours']:.2f}s",
        f"{hung['ratio']:.3f}",
    )
    for key, label in (
        ("units", "4 failover under load: units run"),
        ("failed_after_crash", "  failed, started after the crash"),
        ("failed_in_flight", "  failed, in flight at the crash"),
        ("first_write_after_promotion_s", "  first write after promotion (s)"),
    ):
        values = [failover[side][key] for side in SIDES]
        row(
            label,
            *(
                ("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v))
                for v in values
            ),
            "",
        )
    row("peak RSS (MiB)", f"{rss['stock']:.1f}", f"{rss['ours']:.1f}", f"{rss['ratio']:.3f}")
    print()


if __name__ == "__main__":
    sys.exit(main())
