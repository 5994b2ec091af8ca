"""read_your_writes under a read-mostly load with writes, against a plain replica alias.

Each request of the load is one of two kinds: 10% write an order through the
primary alias and are followed at once by their redirect, a request that reads
the order back through the replica alias; the rest read an existing row
through the replica alias. A redirect's read that misses its order is a stale
read (every redirect checks for its own write). The same load runs through a
plain replica alias (standbys, no read_your_writes) and through one with
``read_your_writes``, where the writing request hands its position to the
redirect as the middleware's cookie would (``causal.position()`` at its end,
``causal.resume()`` at the redirect's start).

Reported: stale reads per side, the share of replica reads served by standbys,
the time of a writing request (the position taken at its end included) and of
a replica read without writes in scope, each as a ratio to the plain side.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

from django_pg_failover.lab import Cluster

from . import django_setup, scenarios

PLAIN, RYW = "replica_plain", "replica_ryw"


def add_aliases(cluster: Cluster, pool: bool) -> None:
    from django.db import connections

    for alias, failover in ((PLAIN, {}), (RYW, {"read_your_writes": "ours"})):
        database = django_setup.ours(cluster, pool=pool, **failover)
        database["OPTIONS"]["target_session_attrs"] = "standby"
        connections.settings[alias] = connections.configure_settings(
            {"default": {}, alias: database}
        )[alias]
    # "ours" connected before these aliases existed: the replica alias tells it to mark
    # its writes when it connects.
    connections[RYW].ensure_connection()


def load(alias: str, pk: int, requests: int, write_share: float, seed: int) -> dict[str, Any]:
    from django_pg_failover import causal
    from django_pg_failover.causal.routing import counts
    from shop.models import Order

    rng = random.Random(seed)
    reads = stale = 0
    write_seconds: list[float] = []
    primary_before = counts.primary
    for _ in range(requests):
        causal.new_scope()  # what request_started does
        if rng.random() < write_share:
            started = time.perf_counter()
            key = uuid.uuid4().hex
            Order.objects.using("ours").create(key=key)
            token = causal.position() if alias == RYW else ""  # the middleware's cookie
            write_seconds.append(time.perf_counter() - started)
            causal.new_scope()  # the redirect
            if token:
                causal.resume(token)
            stale += not Order.objects.using(alias).filter(key=key).exists()
        else:
            Order.objects.using(alias).filter(pk=pk).exists()
        reads += 1
    by_primary = counts.primary - primary_before
    causal.new_scope()
    return {
        "reads": reads,
        "redirects": len(write_seconds),
        "stale": stale,
        "standby_share": (reads - by_primary) / reads,
        "write_request_s": sum(write_seconds) / max(len(write_seconds), 1),
    }


def run(cluster: Cluster, pool: bool, pk: int, slices: int, requests: int = 2000) -> dict:
    from django.db import connections

    add_aliases(cluster, pool)
    result: dict[str, Any] = {}
    # Both sides twice, alternating: the machine's noise falls on both.
    runs = {PLAIN: [], RYW: []}
    for seed in range(2):
        for alias in (PLAIN, RYW) if seed == 0 else (RYW, PLAIN):
            runs[alias].append(load(alias, pk, requests // 2, 0.1, seed))
    for alias, parts in runs.items():
        result[alias] = {
            "reads": sum(p["reads"] for p in parts),
            "redirects": sum(p["redirects"] for p in parts),
            "stale": sum(p["stale"] for p in parts),
            "standby_share": sum(p["standby_share"] for p in parts) / len(parts),
            "write_request_s": sum(p["write_request_s"] for p in parts) / len(parts),
        }
    result["write_request_ratio"] = (
        result[RYW]["write_request_s"] / result[PLAIN]["write_request_s"]
    )
    # A replica read in a scope without writes: ORM get() x100 on each alias.
    times = scenarios.time_slices(
        {s: scenarios.orm_queries(s, pk, 100) for s in (PLAIN, RYW)}, slices
    )
    result["read_without_writes"] = scenarios.compare(times, ours=RYW, stock=PLAIN)
    for alias in (PLAIN, RYW):
        connections[alias].close()
    return result


def print_rows(r: dict, row: Any, timed: Any) -> None:
    plain, ryw = r[PLAIN], r[RYW]
    row("read_your_writes: stale redirect reads", plain["stale"], ryw["stale"])
    row("  of redirects (10% of requests write)", plain["redirects"], ryw["redirects"])
    row(
        "  share of replica reads served by standbys",
        round(plain["standby_share"], 4),
        round(ryw["standby_share"], 4),
    )
    row(
        "  writing request, position taken (ms)",
        plain["write_request_s"] * 1e3,
        ryw["write_request_s"] * 1e3,
        f"{r['write_request_ratio']:.3f}",
    )
    timed(
        "  ORM get() x100 on the replica alias, no write in scope (s)",
        r["read_without_writes"],
        ours=RYW,
        stock=PLAIN,
    )
