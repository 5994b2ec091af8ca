"""Command line for the lab: ``python -m django_pg_failover.lab start|status|failover|stop``.

``start --patroni`` runs the servers under Patroni and etcd; the other commands
work on either kind of lab.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from urllib.parse import quote

from .binaries import find_install
from .cluster import Cluster
from .common import Lab, default_lab_dir, status_as_dicts
from .errors import LabError
from .patroni import PatroniCluster, load_lab


def databases_snippet(cluster: Lab) -> str:
    """Settings to paste: the database, the app (its system checks, ``pg_hosts``), and the
    backend's log lines on the console (what it does at a failover)."""
    hosts = ",\n".join(f'            "{h}"' for h in cluster.hosts())
    return f"""INSTALLED_APPS = [
    # ...your apps...
    "django_pg_failover",  # its system checks and manage.py pg_hosts
]

LOGGING = {{
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {{"console": {{"class": "logging.StreamHandler"}}}},
    "loggers": {{"django_pg_failover": {{"handlers": ["console"], "level": "INFO"}}}},
}}

DATABASES = {{
    "default": {{
        "ENGINE": "django_pg_failover",
        "NAME": "{cluster.django_database()["NAME"]}",
        "USER": "{cluster.django_database()["USER"]}",
        "PASSWORD": open("{cluster.password_file}").read(),
        "HOST": [
{hosts},
        ],
    }}
}}"""


def database_url_line(cluster: Lab) -> str:
    """A shell line that sets DATABASE_URL; the password is read from its file, not printed."""
    # The lab's password is URL-safe: as read from the file, it needs no encoding.
    read = f"$(cat {shlex.quote(str(cluster.password_file))})"
    url = cluster.database_url().replace(quote(cluster.password, safe=""), read, 1)
    return f'export DATABASE_URL="{url}"'


def format_status(cluster: Lab) -> str:
    if isinstance(cluster, PatroniCluster):
        return format_patroni_status(cluster)
    lines = [f"{'node':<6}{'port':>7}  {'state':<6}{'role':<9}{'timeline':>9}{'lag':>12}"]
    for row in cluster.status():
        lag = "" if row.replay_lag_bytes is None else f"{row.replay_lag_bytes} B"
        timeline = "" if row.timeline is None else str(row.timeline)
        lines.append(
            f"{row.name:<6}{row.port:>7}  {row.state:<6}{row.role:<9}{timeline:>9}{lag:>12}"
        )
    return "\n".join(lines)


def format_patroni_status(cluster: PatroniCluster) -> str:
    """Patroni's view (role, state, timeline, lag) beside each agent's and server's own."""
    lines = [
        f"{'node':<6}{'port':>7}{'api':>7}  {'agent':<7}{'patroni role':<14}{'state':<11}"
        f"{'timeline':>9}{'lag':>10}  server"
    ]
    for row in cluster.status():
        lines.append(
            f"{row.name:<6}{row.port:>7}{row.api_port:>7}  {row.agent:<7}{row.role or '-':<14}"
            f"{row.state or '-':<11}{'' if row.timeline is None else row.timeline:>9}"
            f"{'' if row.lag is None else row.lag:>10}  {row.server}"
        )
    if cluster.haproxy is not None:
        routes = ", ".join(sorted(cluster.haproxy.routes_to())) or "no member"
        lines.append(f"HAProxy {cluster.haproxy.host} routes to {routes}")
    return "\n".join(lines)


def cmd_start(args: argparse.Namespace) -> int:
    install = find_install(args.pg_version) if args.pg_version else None
    started = time.monotonic()
    if args.patroni:
        cluster: Lab = PatroniCluster.create(
            members=args.standbys + 1,
            install=install,
            synchronous=args.sync,
            root=args.dir,
            detach=True,
        )
        if args.haproxy:
            cluster.start_haproxy()
    else:
        if args.haproxy:
            raise LabError("--haproxy goes with --patroni (its checks ask Patroni's REST API)")
        cluster = Cluster.create(
            standbys=args.standbys,
            install=install,
            synchronous=args.sync,
            root=args.dir,
            detach=True,
        )
    node0 = cluster.nodes[0] if isinstance(cluster, Cluster) else cluster.members[0].pg
    print(
        f"Lab started in {time.monotonic() - started:.1f}s: PostgreSQL "
        f"{node0.install.major} ({node0.install.source}), data in {cluster.root}"
    )
    if isinstance(cluster, PatroniCluster):
        print(
            "Patroni agents: "
            + ", ".join(f"{m.name} {m.api_url}" for m in cluster.members)
            + f"; etcd {cluster.etcd.url}"
        )
    if isinstance(cluster, PatroniCluster) and cluster.haproxy is not None:
        print(f"HAProxy: {cluster.haproxy.host} (HOST of a DATABASES entry through it)")
    print()
    print(format_status(cluster))
    print("\nPaste into your settings:\n")
    print(databases_snippet(cluster))
    print("\nOr keep DATABASES = {'default': django_pg_failover.config()} and set:\n")
    print(database_url_line(cluster))
    print(
        "\nThe ports are new at each `lab start` (free ones, picked then): after a restart,"
        "\nrun the export line again, or paste the HOST list again."
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cluster = load_lab(args.dir)
    if args.json:
        print(json.dumps(status_as_dicts(cluster.status())))
    else:
        print(format_status(cluster))
    return 0


def patroni_failover(cluster: PatroniCluster, args: argparse.Namespace) -> str:
    """The fault, then what Patroni did about it (the lab only waits and watches)."""
    if args.delay:
        raise LabError("--delay: Patroni decides when to promote; leave it out")
    target = cluster.member(args.to) if args.to else None
    old = cluster.leader()
    started = time.monotonic()
    if args.fault == "postmaster":
        cluster.kill_postmaster(old)
        leader = cluster.wait_healthy(timeout=60)
        return (
            f"kill -9 of {old.name}'s postmaster; Patroni restarted it in place: {leader.name} "
            f"leads again after {time.monotonic() - started:.1f}s"
        )
    if args.fault == "stop":
        new = cluster.switchover(target)
        cluster.wait_healthy(timeout=60)
        return f"switchover {old.name} -> {new.name}: {time.monotonic() - started:.1f}s"
    if args.fault == "crash":
        cluster.kill_node(old)
        action = "kill -9 of the agent and PostgreSQL of"
    else:
        cluster.freeze(old)
        action = "SIGSTOP of the agent and PostgreSQL of"
    new = cluster.wait_leader(other_than=old, timeout=cluster.ttl * 3)
    took = time.monotonic() - started
    line = f"{action} {old.name}; Patroni promoted {new.name} after {took:.1f}s"
    if args.rejoin:
        rejoined = time.monotonic()
        cluster.rejoin(old)
        line += f"; {old.name} rejoined: {time.monotonic() - rejoined:.1f}s"
    return line


def cmd_failover(args: argparse.Namespace) -> int:
    cluster = load_lab(args.dir)
    if isinstance(cluster, PatroniCluster):
        print(patroni_failover(cluster, args))
        print(format_status(cluster))
        return 0
    if args.fault == "postmaster":
        raise LabError("--fault postmaster needs a Patroni lab (start --patroni)")
    target = cluster.node(args.to) if args.to else None
    report = cluster.failover(
        fault=args.fault, target=target, promote_delay=args.delay, rejoin=args.rejoin
    )
    print(
        f"{args.fault} {report.old_primary}: {report.fault_seconds * 1000:.0f} ms; "
        + (
            f"no primary for {report.waited_seconds:.1f} s (--delay); "
            if report.waited_seconds
            else ""
        )
        + f"promoted {report.new_primary}: {report.promote_seconds * 1000:.0f} ms; "
        f"standbys follow: {report.follow_seconds * 1000:.0f} ms"
        + (
            f"; {report.old_primary} rejoined: {report.rejoin_seconds * 1000:.0f} ms"
            if report.rejoin_seconds is not None
            else ""
        )
    )
    print(format_status(cluster))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    cluster = load_lab(args.dir)
    cluster.close(remove=True)
    print(f"Lab in {args.dir} stopped and removed.")
    return 0


def cmd_prepare_patroni(args: argparse.Namespace) -> int:
    """Find etcd and make Patroni runnable by the server user, before any test needs them."""
    from .etcd import etcd_version, find_etcd
    from .haproxy import find_haproxy, haproxy_version
    from .patroni_runtime import patroni_python, patroni_version
    from .system import ServerUser

    etcd = find_etcd()
    user = ServerUser.resolve()
    python = patroni_python(user)
    print(f"etcd {etcd_version(etcd)}: {etcd}")
    print(f"Patroni {patroni_version()} runs as {user.name!r} with {python}")
    try:
        haproxy = find_haproxy()
    except LabError as exc:  # only the proxy tests and demo need it
        print(f"warning: {exc}", file=sys.stderr)
    else:
        print(f"HAProxy {haproxy_version(haproxy)}: {haproxy}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m django_pg_failover.lab",
        description="A PostgreSQL primary with streaming standbys on loopback, for "
        "trying failover by hand.",
    )
    dir_help = f"where the lab lives (default: $PG_FAILOVER_LAB_DIR or {default_lab_dir()})"
    parser.add_argument("--dir", type=Path, default=default_lab_dir(), help=dir_help)
    # `lab status --dir X` works as `lab --dir X status` does: people write it after.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--dir", type=Path, default=argparse.SUPPRESS, help=dir_help)
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser("start", help="build and start a lab", parents=[after])
    start.add_argument("--standbys", type=int, default=2)
    start.add_argument("--sync", action="store_true", help="synchronous replication")
    start.add_argument("--pg-version", type=int, help="PostgreSQL major version to use")
    start.add_argument(
        "--patroni",
        action="store_true",
        help="run the servers under Patroni agents with etcd (--sync: synchronous_mode)",
    )
    start.add_argument(
        "--haproxy",
        action="store_true",
        help="with --patroni: HAProxy in front, routing to the member whose /primary says 200",
    )
    start.set_defaults(func=cmd_start)

    status = commands.add_parser("status", help="show each node's role and lag", parents=[after])
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    failover = commands.add_parser(
        "failover", help="fail the primary, promote a standby", parents=[after]
    )
    failover.add_argument(
        "--fault",
        choices=["crash", "hang", "stop", "postmaster"],
        default="crash",
        help="crash: kill -9 the primary (under Patroni: its agent too); hang: SIGSTOP it; "
        "stop: a planned switchover; postmaster: kill -9 the postmaster alone (Patroni only)",
    )
    failover.add_argument("--to", help="the standby to promote (default: most advanced)")
    failover.add_argument(
        "--delay", type=float, default=0.0, help="seconds before promoting (not with Patroni)"
    )
    failover.add_argument(
        "--no-rejoin",
        dest="rejoin",
        action="store_false",
        help="leave the old primary down instead of rejoining it as a standby",
    )
    failover.set_defaults(func=cmd_failover)

    stop = commands.add_parser("stop", help="stop the lab and delete its files", parents=[after])
    stop.set_defaults(func=cmd_stop)

    prepare = commands.add_parser(
        "prepare-patroni",
        parents=[after],
        help="check for etcd and make Patroni runnable by the server user (once)",
    )
    prepare.set_defaults(func=cmd_prepare_patroni)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
