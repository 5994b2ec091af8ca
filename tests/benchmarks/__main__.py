"""Benchmark django_pg_failover against Django's stock PostgreSQL backend on a real lab.

    python -m tests.benchmarks [--rounds 15] [--pg-version 18] [--variants psycopg2,psycopg]
                               [--no-patroni | --only-patroni]

One lab; for each driver variant (psycopg2, psycopg 3, psycopg 3 with Django's
pool) a process of its own runs every scenario with both backends side by side
on that driver (Django picks one driver per process). Times are compared as
ratios (ours / stock), never quoted alone: loopback timings here are noisy.
A Patroni cluster then lives through Patroni's own failover (the leader's
node killed) with both backends under load, straight to the members and
through HAProxy (tests/benchmarks/patroni.py).
Prints a table per variant, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

from django_pg_failover.lab import Cluster, find_install

from . import django_setup, read_your_writes
from .patroni import print_patroni

ROOT = Path(__file__).resolve().parents[2]
HIDDEN_PSYCOPG = ROOT / "tests" / "hidden_psycopg"
VARIANTS = ("psycopg2", "psycopg", "psycopg+pool")


def child(variant: str, *args: str) -> dict:
    """Run ``tests.benchmarks.run`` for one variant; its JSON result."""
    command = [sys.executable, "-m", "tests.benchmarks.run", "--variant", variant, *args]
    return child_json(command, hide_psycopg=variant == "psycopg2")


def child_json(command: list[str], hide_psycopg: bool = False) -> dict:
    path = [str(ROOT)]
    if hide_psycopg:
        path.insert(0, str(HIDDEN_PSYCOPG))  # Django then picks psycopg2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare(cluster: Cluster) -> None:
    """The shop's tables, a seed row, room for the stampede's connections; then a snapshot."""
    django_setup.configure(
        {"ours": django_setup.ours(cluster), "stock": django_setup.ours(cluster)}
    )
    from django.core.management import call_command
    from django.db import connections

    from shop.models import Order

    call_command("migrate", database="ours", verbosity=0)
    Order.objects.using("ours").create(key="seed")
    cluster.wait_replayed()
    connections.close_all()
    for node in cluster.nodes:  # 200 waiting threads, then 200 connections at once
        node.query("ALTER SYSTEM SET max_connections = 300")
    cluster.snapshot()  # restarts the servers (max_connections); reset() returns here


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--pg-version", type=int)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--frozen-seconds", type=float, default=60.0)
    parser.add_argument("--stampede", type=int, default=200)
    parser.add_argument("--outage", type=float, default=3.0)
    parser.add_argument(
        "--picture-dir",
        default=str(ROOT),
        help="where the first 4-thread failover of each variant is drawn "
        "(bench-failover-VARIANT.png and .svg; default: %(default)s)",
    )
    patroni = parser.add_mutually_exclusive_group()
    patroni.add_argument("--no-patroni", action="store_true", help="skip the Patroni scenario")
    patroni.add_argument("--only-patroni", action="store_true", help="the Patroni scenario only")
    parser.add_argument(
        "--connects-only", action="store_true", help="the connect scenarios only (no Patroni)"
    )
    args = parser.parse_args()
    variants = [] if args.only_patroni else [v for v in args.variants.split(",") if v]

    install = find_install(args.pg_version)
    print(f"PostgreSQL {install.major} ({install.source}); building the lab...", flush=True)
    results: dict[str, dict] = {}
    with Cluster.create(install=install) if variants else nullcontext() as cluster:
        if variants:
            prepare(cluster)
        common = [
            "--lab", str(cluster.root),
            "--rounds", str(args.rounds),
            "--failovers", str(args.failovers),
            "--frozen-seconds", str(args.frozen_seconds),
            "--stampede", str(args.stampede),
            "--outage", str(args.outage),
            "--picture-dir", args.picture_dir,
        ]  # fmt: skip
        if args.connects_only:
            common.append("--connects-only")
        for variant in variants:
            print(f"{variant}:", flush=True)
            results[variant] = child(variant, *common)
            cluster.reset()
            if args.connects_only:
                continue
            rss = {side: child(variant, "--lab", str(cluster.root), "--rss-only", side)
                   for side in ("stock", "ours")}  # fmt: skip
            results[variant]["rss"] = {**rss, "ratio": rss["ours"] / rss["stock"]}
            cluster.reset()
    patroni_result = None
    if not (args.no_patroni or args.connects_only):
        print("patroni:", flush=True)
        patroni_result = child_json(
            [sys.executable, "-m", "tests.benchmarks.patroni", "--pg-version", str(install.major)]
        )
    for variant, result in results.items():
        print_table(variant, result)
    if patroni_result is not None:
        print_patroni(patroni_result)
    print(json.dumps({"postgresql": install.major, **results, "patroni": patroni_result}))
    return 0


def print_table(variant: str, r: dict) -> None:
    def row(name: str, stock: object, ours: object, ratio: str = "") -> None:
        print(f"  {name:<52}{fmt(stock):>10}{fmt(ours):>10}  {ratio}")

    def fmt(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value)

    def timed(name: str, c: dict, ours: str = "ours", stock: str = "stock") -> None:
        cpu = c["cpu"]
        row(
            name,
            c[stock],
            c[ours],
            f"{c['ratio']:.3f}  cpu {cpu['ratio']:.3f} [{cpu['q1']:.3f}-{cpu['q3']:.3f}]  "
            f"(wall: fastest slices {c['best']:.3f}; "
            f"{c['slices']} pairs, quartiles {c['q1']:.3f}-{c['q3']:.3f})",
        )

    print(f"\n{variant} ({r['driver']})")
    row("scenario (wall time; cpu = client CPU, process_time)", "stock", "ours", "ours/stock")
    if "cursor_query" in r:  # not with --connects-only
        timed("cursor execute + fetchone x200, median slice (s)", r["cursor_query"])
        timed("  the same with retry_reads on", r["cursor_query_retry_reads"], ours="ours_reads")
        timed("ORM get() x100, one connection, median slice (s)", r["orm_get"])
        timed("  the same with retry_reads on", r["orm_get_retry_reads"], ours="ours_reads")
        timed("1000-row INSERT in atomic, median (s)", r["bulk_insert"])
        timed(
            "  retry_reads on / off",
            r["bulk_insert_reads_vs_off"],
            ours="ours_reads",
            stock="ours",
        )
    timed("ensure_connection + close x5, median slice (s)", r["connect_close"])
    timed("connect + SELECT 1 + close x5, median slice (s)", r["connect"])
    if "connect_role_check_query" in r:
        timed(
            "  the same with role_check='query'", r["connect_role_check_query"], ours="ours_query"
        )
    if "request_cycle" in r:
        timed("request cycle x50, persistent connection (s)", r["request_cycle"])
        row("  one liveness check of an idle connection (us)", None, r["liveness_check_s"] * 1e6)
    if "read_your_writes" in r:
        read_your_writes.print_rows(r["read_your_writes"], row, timed)
    if "hung_first_host" not in r:  # --connects-only
        return
    hung = r["hung_first_host"]
    row("hung first host: first connect (s)", hung["first_stock"], hung["first_ours"])
    row(
        "hung first host: 20 new connections (s)",
        hung["stock"],
        hung["ours"],
        f"{hung['ratio']:.3f}",
    )
    frozen = r["frozen_host"]
    row(
        f"frozen first host, {frozen['requests']} requests: slowest (s)",
        None,
        frozen["slowest_s"],
        f"{frozen['slowed_over_0.5s']} slowed by more than 0.5 s",
    )
    for threads in (1, 4):
        f = r[f"failover_{threads}"]
        row(
            f"failover, {threads} thread(s): failed units after the crash",
            f["stock"]["failed_after_crash"],
            f["ours"]["failed_after_crash"],
        )
        row(
            "  first write after promotion, median (s)",
            f["stock"]["first_write_median_s"],
            f["ours"]["first_write_median_s"],
        )
        row("  ... worst (s)", f["stock"]["first_write_worst_s"], f["ours"]["first_write_worst_s"])
    if "persistent_failover" in r:
        p = r["persistent_failover"]
        row("persistent connections, failover: failed units", p["stock"], p["ours"])
    if "stampede" in r:
        s = r["stampede"]
        row(
            f"{s['threads']} threads through a failover: served",
            None,
            s["served"],
            f"failed {s['failed']}",
        )
        row("  all served within (s) of the promotion", None, s["all_served_within_s"])
        row(f"  {s['threads']} connects at once, the driver alone (s)", None, s["driver_alone_s"])
        row("  sessions opened while waiting, per host per second", None, s["per_host_per_second"])
    rss = r["rss"]
    row("peak RSS (MiB)", rss["stock"], rss["ours"], f"{rss['ratio']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
