"""The benchmark's scenarios: each returns plain numbers for one driver variant.

Steady-state work is timed in many short slices (tens of milliseconds), the
sides taking turns and the side that runs first alternating, so that a burst of
the machine's noise falls on both sides of a pair. The ratio reported is the
median of the pairs' ratios; the ratio of each side's fastest slice (as
``timeit`` reports) and the spread of the pairs' ratios are given beside it.
Faults are real (kill -9, SIGSTOP, promotion) and both sides live through the
same fault at the same time.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django_pg_failover.lab import Cluster
from django_pg_failover.lab.picture import PictureUnavailable, Timeline, draw

from . import django_setup

SIDES = ("stock", "ours")


# -- steady state -----------------------------------------------------------------------


def time_slices(
    work: dict[str, Callable[[], None]], slices: int
) -> dict[str, dict[str, list[float]]]:
    """Each side's slices: wall time and the process's CPU time (``process_time``:
    every thread of the process, the backend's own included)."""
    times: dict[str, dict[str, list[float]]] = {side: {"wall": [], "cpu": []} for side in work}
    names = list(work)
    for n in range(slices):
        for side in names if n % 2 == 0 else names[::-1]:
            prepare = getattr(work[side], "prepare", None)
            if prepare is not None:
                prepare()  # not timed
            cpu, started = time.process_time(), time.perf_counter()
            work[side]()
            times[side]["wall"].append(time.perf_counter() - started)
            times[side]["cpu"].append(time.process_time() - cpu)
    return times


def compare(
    times: dict[str, dict[str, list[float]]], ours: str = "ours", stock: str = "stock"
) -> dict:
    """Wall time as ours/stock ratios, with the same for CPU time under ``cpu``."""
    result = _ratios(times[ours]["wall"], times[stock]["wall"], ours, stock)
    result["cpu"] = _ratios(times[ours]["cpu"], times[stock]["cpu"], ours, stock)
    return result


def _ratios(ours_times: list[float], stock_times: list[float], ours: str, stock: str) -> dict:
    pairs = [o / s for o, s in zip(ours_times, stock_times, strict=True) if s > 0]
    quartiles = statistics.quantiles(pairs, n=4)
    return {
        stock: statistics.median(stock_times),
        ours: statistics.median(ours_times),
        "ratio": statistics.median(pairs),
        "best": min(ours_times) / min(stock_times),
        "q1": quartiles[0],
        "q3": quartiles[2],
        "slices": len(pairs),
    }


def cursor_queries(alias: str, count: int) -> Callable[[], None]:
    """A raw Django cursor: ``execute("SELECT %s")`` then ``fetchone()``, ``count`` times.

    Each slice runs on a connection of its own, opened before the slice is timed:
    a loopback round trip costs 25 us or 1-3 ms depending on where the scheduler
    puts the server's process, and one connection kept for the whole run would
    make that placement, not the backend, the difference between the sides.
    """
    from django.db import connections

    def prepare() -> None:
        connection = connections[alias]
        connection.close()
        connection.ensure_connection()

    def run() -> None:
        with connections[alias].cursor() as cursor:
            for _ in range(count):
                cursor.execute("SELECT %s", [1])
                cursor.fetchone()

    run.prepare = prepare  # type: ignore[attr-defined]
    return run


def connect_close(alias: str, count: int) -> Callable[[], None]:
    """``ensure_connection()`` then ``close()``: what a request with CONN_MAX_AGE = 0 pays."""
    from django.db import connections

    def run() -> None:
        for _ in range(count):
            connection = connections[alias]
            connection.ensure_connection()
            connection.close()

    return run


def orm_queries(alias: str, pk: int, count: int) -> Callable[[], None]:
    """ORM ``get()``, ``count`` times; each slice on a connection of its own (see
    :func:`cursor_queries`)."""
    from django.db import connections

    from shop.models import Order

    manager = Order.objects.using(alias)

    def prepare() -> None:
        connection = connections[alias]
        connection.close()
        connection.ensure_connection()

    def run() -> None:
        for _ in range(count):
            manager.get(pk=pk)

    run.prepare = prepare  # type: ignore[attr-defined]
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


def requests(alias: str, pk: int, count: int) -> Callable[[], None]:
    """A persistent connection through Django's request cycle: one query per request."""
    from django.core.signals import request_finished, request_started

    from shop.models import Order

    manager = Order.objects.using(alias)

    def run() -> None:
        for _ in range(count):
            request_started.send(sender=None)
            manager.get(pk=pk)
            request_finished.send(sender=None)

    return run


def bulk_insert_in_atomic(alias: str, rows: int) -> Callable[[], None]:
    from django.db import transaction

    from shop.models import Order

    def run() -> None:
        with transaction.atomic(using=alias):
            Order.objects.using(alias).bulk_create(Order(key=uuid.uuid4().hex) for _ in range(rows))
            transaction.set_rollback(True, using=alias)  # the same table every round

    return run


def liveness_check_cost(alias: str, count: int = 20000) -> float:
    """Seconds one look at an idle connection's socket costs (what each request pays)."""
    from django.db import connections

    from django_pg_failover.losing.liveness import idle_connection_failure

    wrapper = connections[alias]
    wrapper.ensure_connection()
    started = time.perf_counter()
    for _ in range(count):
        idle_connection_failure(wrapper.driver, wrapper.connection)
    return (time.perf_counter() - started) / count


# -- a hung first host ------------------------------------------------------------------------


def hung_first_host(cluster: Cluster, count: int, pool: bool) -> dict[str, float]:
    from django.db import connections

    from django_pg_failover.connecting.memory import host_status

    hung, primary, other = cluster.standbys[0], cluster.primary, cluster.standbys[1]
    order = [hung, primary, other]
    django_setup.set_alias("ours", django_setup.ours(cluster, order, pool=pool))
    django_setup.set_alias("stock", django_setup.stock(cluster, order, pool=pool))
    host_status.clear()
    cluster.hang(hung, include_sessions=False)
    totals, first = {}, {}
    try:
        for side in SIDES[::-1]:
            started = time.perf_counter()
            for n in range(count):
                connection = connections[side]
                connection.ensure_connection()
                assert int(connection.connection.info.port) == primary.port
                connection.close()
                if pool:  # a new pool: its first connection again
                    connection.close_pool()
                if n == 0:
                    first[side] = time.perf_counter() - started
            totals[side] = time.perf_counter() - started
    finally:
        cluster.resume(hung)
    return {
        **totals,
        "ratio": totals["ours"] / totals["stock"],
        "first_ours": first["ours"],
        "first_stock": first["stock"],
    }


def frozen_host_steady(cluster: Cluster, seconds: float, pool: bool) -> dict[str, float]:
    """A host frozen for ``seconds``, listed first, while requests run: the slowest ones."""
    from django.core.signals import request_finished, request_started
    from django.db import connections

    from django_pg_failover.connecting.memory import host_status
    from shop.models import Order

    hung, primary, other = cluster.standbys[0], cluster.primary, cluster.standbys[1]
    django_setup.set_alias("ours", django_setup.ours(cluster, [hung, primary, other], pool=pool))
    host_status.clear()
    manager = Order.objects.using("ours")
    durations: list[float] = []
    request_started.send(sender=None)
    manager.exists()  # a healthy baseline connection first
    request_finished.send(sender=None)
    cluster.hang(hung)
    try:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            started = time.perf_counter()
            request_started.send(sender=None)
            manager.exists()
            connections["ours"].close()  # every request connects: the worst case
            request_finished.send(sender=None)
            durations.append(time.perf_counter() - started)
            time.sleep(0.02)
    finally:
        cluster.resume(hung)
    durations.sort()
    return {
        "requests": len(durations),
        "median_s": statistics.median(durations),
        "slowest_s": durations[-1],
        "slowed_over_0.5s": sum(d > 0.5 for d in durations),
    }


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

    def worker(self, stop: threading.Event, pause: float = 0.01) -> None:
        from django.core.signals import request_finished, request_started
        from django.db import Error, connections

        from shop.models import Order

        orders = Order.objects.using(self.alias)
        while not stop.is_set():
            started = time.monotonic()
            write_done = None
            request_started.send(sender=None)
            try:
                orders.filter(key="seed").exists()
                orders.create(key=uuid.uuid4().hex)
                write_done = time.monotonic()
                ok = True
            except Error:
                ok = False
            finally:
                request_finished.send(sender=None)
            with self.lock:
                self.units.append(Unit(started, time.monotonic(), ok, write_done))
            time.sleep(pause)  # think time, the same for both sides
        connections.close_all()


def one_failover(
    cluster: Cluster,
    threads: int,
    promote_delay: float,
    databases: dict,
    pause: float = 0.01,
    picture: Path | None = None,
) -> dict:
    for side, database in databases.items():
        django_setup.set_alias(side, database)
    loads = {side: Load(side) for side in databases}
    stop = threading.Event()
    workers = [
        threading.Thread(target=loads[side].worker, args=(stop, pause))
        for side in databases
        for _ in range(threads)
    ]
    began = time.monotonic()
    for worker in workers:
        worker.start()
    time.sleep(1.0)
    crashed_node = cluster.primary
    killed = time.monotonic()  # the picture's mark: kill -9 takes a while on a busy machine
    cluster.crash(crashed_node)
    crashed = time.monotonic()  # units that began before this may have reached the old primary
    time.sleep(promote_delay)
    new_primary = cluster.promote()
    promoted = time.monotonic()
    time.sleep(1.5)
    stop.set()
    for worker in workers:
        worker.join(60)
    if picture is not None:
        marks = [
            (killed - began, f"kill -9 {crashed_node.name} (primary)"),
            (promoted - began, f"promoted {new_primary.name}"),
        ]
        label = {"ours": "django_pg_failover", "stock": "Django's postgresql backend"}
        timelines = [
            Timeline(label[side], [(u.ended - began, u.ok) for u in loads[side].units], marks)
            for side in ("ours", "stock")
        ]
        title = f"failover under load, {threads} thread(s) per backend, requests per 100 ms"
        try:
            draw(timelines, title, picture)
        except PictureUnavailable as exc:
            print(f"  {exc}", file=sys.stderr, flush=True)
    result = {}
    for side, load in loads.items():
        after = [u for u in load.units if u.started >= crashed]
        writes = [u.write_done for u in load.units if u.write_done and u.write_done >= promoted]
        result[side] = {
            "units": len(load.units),
            "failed_after_crash": sum(not u.ok for u in after),
            "first_write_after_promotion_s": (min(writes) - promoted) if writes else None,
        }
    return result


def failovers(
    cluster: Cluster, threads: int, times: int, pool: bool, picture: Path | None = None
) -> dict:
    """``times`` failovers, both backends under the same load; the first one drawn into
    ``picture`` (.png and .svg) when given."""
    databases = {
        "stock": django_setup.stock(cluster, pool=pool),
        "ours": django_setup.ours(cluster, pool=pool),
    }
    runs = []
    for number in range(times):
        cluster.reset()
        drawn = picture if number == 0 else None
        runs.append(one_failover(cluster, threads, 1.0, databases, picture=drawn))
    summary = {}
    for side in SIDES:
        firsts = [r[side]["first_write_after_promotion_s"] for r in runs]
        known = [f for f in firsts if f is not None]
        summary[side] = {
            "failed_after_crash": sum(r[side]["failed_after_crash"] for r in runs),
            "first_write_median_s": statistics.median(known) if known else None,
            "first_write_worst_s": max(known) if known else None,
            "units": sum(r[side]["units"] for r in runs),
        }
    return summary


def persistent_failover(cluster: Cluster, threads: int) -> dict:
    """CONN_MAX_AGE > 0 and no health checks: a connection that died while idle."""
    cluster.reset()
    databases = {
        "stock": {**django_setup.stock(cluster), "CONN_MAX_AGE": 600},
        "ours": {**django_setup.ours(cluster), "CONN_MAX_AGE": 600},
    }
    result = one_failover(cluster, threads, 1.0, databases, pause=0.05)
    return {side: result[side]["failed_after_crash"] for side in SIDES}


# -- many waiting threads ------------------------------------------------------------------------


def stampede(cluster: Cluster, threads: int, outage: float) -> dict:
    """``threads`` requests wait through an outage of ``outage`` seconds: the servers' cost."""
    from django.db import connections

    from django_pg_failover.connecting.memory import host_status

    cluster.reset()
    django_setup.set_alias("ours", django_setup.ours(cluster, retry_timeout=30))
    # A process that was serving: it knows the primary (and nothing of the standbys).
    host_status.clear()
    connections["ours"].ensure_connection()
    connections["ours"].close()
    standbys = cluster.standbys

    def sessions(node) -> int:
        return int(node.scalar("SELECT sum(sessions) FROM pg_stat_database"))

    before = {node.name: sessions(node) for node in standbys}
    served: list[float] = []
    failed: list[BaseException] = []
    lock = threading.Lock()
    crash_done = threading.Event()

    def waiter() -> None:
        crash_done.wait()
        try:
            connections["ours"].ensure_connection()
            with lock:
                served.append(time.monotonic())
        except Exception as exc:
            failed.append(exc)
        finally:
            connections.close_all()

    workers = [threading.Thread(target=waiter) for _ in range(threads)]
    for worker in workers:
        worker.start()
    cluster.crash(cluster.primary)
    crashed = time.monotonic()
    crash_done.set()
    time.sleep(outage)
    new = cluster.promote()
    promoted = time.monotonic()
    for worker in workers:
        worker.join(60)
    waited = promoted - crashed
    # Every session but the final connections to the new primary was the waiting's cost.
    opened = sum(sessions(node) - before[node.name] for node in standbys) - len(served)
    return {
        "threads": threads,
        "served": len(served),
        "failed": len(failed),
        "all_served_within_s": (max(served) - promoted) if served else None,
        # The same number of threads opening a connection at once with the driver alone:
        # what the machine allows (TCP, a backend forked, SCRAM on both sides).
        "driver_alone_s": connect_storm(new, threads),
        "sessions_while_waiting": opened,
        "per_host_per_second": opened / len(standbys) / waited,
        "new_primary": new.name,
    }


def connect_storm(node, threads: int) -> float:
    """Seconds for ``threads`` threads to each open a connection to ``node`` at once."""
    from django.db import connections

    from django_pg_failover.drivers import get_driver

    driver = get_driver()
    settings = connections["ours"].settings_dict
    params = {
        "host": "127.0.0.1",
        "port": node.port,
        "dbname": settings["NAME"],
        "user": settings["USER"],
        "password": settings["PASSWORD"],
    }
    go = threading.Event()
    opened: list = []

    def connect() -> None:
        go.wait()
        opened.append(driver.connect(params))

    workers = [threading.Thread(target=connect) for _ in range(threads)]
    for worker in workers:
        worker.start()
    started = time.monotonic()
    go.set()
    for worker in workers:
        worker.join(60)
    elapsed = time.monotonic() - started
    for connection in opened:
        driver.close_quietly(connection)
    return elapsed
