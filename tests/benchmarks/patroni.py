"""The benchmark's Patroni scenario: Patroni's own failover under load, ours and stock.

    python -m tests.benchmarks.patroni [--threads 4] [--retry-timeout S] [--no-haproxy]

Kill the leader's node (agent and PostgreSQL); Patroni picks the new leader.
Ours keeps trying to connect for Patroni's ttl + loop_wait + a margin (by
default), as docs/patroni.rst says to set it; synchronous_mode is on, as it
also says. Then the same on the same cluster, healed, with both backends
reaching it through HAProxy (HOST is the proxy's one address; its checks ask
each member's REST ``/primary``). Prints a table per run and, on its last
line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from django_pg_failover.lab import PatroniCluster, find_install

from . import django_setup
from .scenarios import SIDES, Load


def failover_under_load(install, threads: int, retry_timeout: float | None, haproxy: bool) -> dict:
    """The run straight to the members; then, on the same cluster healed, through HAProxy."""
    from django.core.management import call_command
    from django.db import connections

    with PatroniCluster.create(install=install, synchronous=True) as cluster:
        retry_timeout = retry_timeout or cluster.ttl + cluster.loop_wait + 9
        point_aliases(cluster, retry_timeout, proxied=False)
        call_command("migrate", database="ours", verbosity=0)
        connections.close_all()
        result = one_kill(cluster, threads, retry_timeout, proxied=False)
        if haproxy:
            cluster.start_haproxy()
            cluster.reset()
            point_aliases(cluster, retry_timeout, proxied=True)
            result["haproxy"] = one_kill(cluster, threads, retry_timeout, proxied=True)
    return result


def point_aliases(cluster: PatroniCluster, retry_timeout: float, proxied: bool) -> None:
    """``ours`` and ``stock`` at the members (or at HAProxy's address alone)."""
    database = cluster.proxy_database if proxied else cluster.django_database
    options = {"connect_timeout": django_setup.CONNECT_TIMEOUT}
    django_setup.set_alias(
        "ours", database(OPTIONS={**options, "failover": {"retry_timeout": retry_timeout}})
    )
    django_setup.set_alias("stock", database(stock=True, OPTIONS=options))


def one_kill(cluster: PatroniCluster, threads: int, retry_timeout: float, proxied: bool) -> dict:
    from django.db import connections

    loads = {side: Load(side) for side in SIDES}
    stop = threading.Event()
    workers = [
        threading.Thread(target=loads[side].worker, args=(stop,))
        for side in SIDES
        for _ in range(threads)
    ]
    routed = None
    with cluster.watch() as watch:
        for worker in workers:
            worker.start()
        time.sleep(1.0)  # steady traffic first
        old = cluster.kill_node()
        killed = time.monotonic()
        new = cluster.wait_leader(other_than=old, timeout=cluster.ttl * 3)
        if proxied:
            assert cluster.haproxy is not None
            cluster.haproxy.wait_routes_to({new.name})
            routed = time.monotonic()
        time.sleep(2.0)
        stop.set()
        for worker in workers:
            worker.join(90)
    change = watch.new_leader_after(killed, old.name)
    connections.close_all()

    new_leader = change.writable
    result: dict = {"patroni_failover_s": new_leader - killed, "retry_timeout": retry_timeout}
    if routed is not None:
        # Polled after the new leader was seen: an upper bound.
        result["haproxy_routed_after_new_leader_s"] = routed - new_leader
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


def print_patroni(result: dict) -> None:
    print_one_kill(result, "")
    if result.get("haproxy"):
        print_one_kill(result["haproxy"], ", through HAProxy")


def print_one_kill(result: dict, through: str) -> None:
    def row(name: str, stock: str, ours: str) -> None:
        print(f"  {name:<52}{stock:>10}{ours:>10}")

    def value(v: object) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    took, retry = result["patroni_failover_s"], result["retry_timeout"]
    routed = result.get("haproxy_routed_after_new_leader_s")
    print(
        f"\nPatroni{through}: the leader's node killed (Patroni's own failover took "
        f"{took:.2f}s"
        + (f"; HAProxy routed to it at {routed:+.2f}s from then" if routed is not None else "")
        + f"; ours with retry_timeout {retry:g}s)"
    )
    row("", "stock", "ours")
    for key, label in (
        ("units", "units run"),
        ("failed_after_kill", "failed, started after the kill"),
        ("failed_in_flight", "failed, in flight at the kill"),
        ("first_write_after_new_leader_s", "new leader takes writes -> first write (s)"),
        ("recovery_over_patroni", "kill -> first write, / Patroni's failover time"),
    ):
        row(label, *(value(result[side][key]) for side in SIDES))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.patroni")
    parser.add_argument("--pg-version", type=int)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--retry-timeout", type=float)
    parser.add_argument("--no-haproxy", dest="haproxy", action="store_false")
    args = parser.parse_args()
    install = find_install(args.pg_version)
    django_setup.configure({"ours": {}, "stock": {}})
    result = failover_under_load(install, args.threads, args.retry_timeout, args.haproxy)
    print_patroni(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
