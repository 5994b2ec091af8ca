"""The failover demo: a Django site keeps serving while its database server dies.

    python testproject/demo.py [--orchestrator lab|patroni] [--proxy haproxy]
                               [--seconds N] [--workers 4] [--no-stock]
                               [--picture STEM | --no-picture]

Starts a lab (a primary and two streaming standbys on loopback; the system's
PostgreSQL, or the embedded one), migrates this project, and sends a steady
load of requests through Django's full request cycle. Then it crashes the
primary, promotes a standby, and brings the old primary back as a standby with
pg_rewind, printing one line per second: requests ok and failed, and which
server answered. The same run with Django's stock backend follows, for
contrast. Everything it started is stopped at the end. With matplotlib installed
(the ``demo`` extra), the same timelines are drawn per 100 ms into
``failover-demo.png`` and ``.svg`` (``--picture STEM`` chooses the name).

With ``--orchestrator patroni`` the servers run under Patroni agents with etcd,
and nobody but Patroni promotes: the demo kills the leader's machine (its agent
and PostgreSQL), Patroni elects a new leader once the old one's lock expires
(its ttl, 20 s), and the dead node's agent, restarted, rewinds it and follows.
The leader changes Patroni reports are marked on the timeline.

With ``--proxy haproxy`` (Patroni only) the site reaches the database through
HAProxy, steered by each member's REST ``/primary``: ``HOST`` is the proxy's
one address, and HAProxy's changes of route are marked on the timeline too.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from wsgiref.util import setup_testing_defaults

sys.path.insert(0, str(Path(__file__).resolve().parent))

from django_pg_failover.lab import Cluster, LeaderWatch, PatroniCluster
from django_pg_failover.lab.picture import PictureUnavailable, Timeline, draw

CRASH_AT = 3.0
PROMOTE_AFTER = 1.5  # a cluster manager's reaction time
REJOIN_AFTER = 2.5


@dataclass
class Second:
    ok: int = 0
    failed: int = 0
    servers: Counter = field(default_factory=Counter)


@dataclass
class Run:
    label: str
    seconds: dict[int, Second] = field(default_factory=lambda: defaultdict(Second))
    events: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    crashed_at: float | None = None
    promoted_at: float | None = None
    first_ok_after_crash: float | None = None
    # Patroni only: when its new leader took writes, as seconds after the crash.
    patroni_failover: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Every request and event, to the 100 ms, for the picture.
    timeline: Timeline = field(init=False)

    def __post_init__(self) -> None:
        self.timeline = Timeline(self.label)

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.seconds.values())

    @property
    def ok(self) -> int:
        return sum(s.ok for s in self.seconds.values())


def call(app, method: str, path: str, payload: dict | None = None) -> tuple[int, bytes]:
    """One request through Django's WSGI handler, as a WSGI server would make it.

    Not django.test.Client: it keeps connections open across requests, which
    no real server does (and which would leave the stock backend on its dead
    connection forever).
    """
    body = json.dumps(payload).encode() if payload is not None else b""
    path, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    setup_testing_defaults(environ)
    statuses: list[str] = []
    result = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    try:
        content = b"".join(result)
    finally:
        result.close()  # request_finished: Django closes or recycles connections
    return int(statuses[0].split()[0]), content


def request_unit(app, node_names: dict[int, str], proxied: bool = False) -> str:
    """One page view that writes, then one that reads: through Django's whole stack.

    ``proxied``: the connection's port is the proxy's; the read asks the server its own.
    """
    status, _ = call(app, "POST", "/orders/", {"key": uuid.uuid4().hex})
    if status != 201:
        raise RuntimeError(f"write answered {status}")
    status, content = call(app, "GET", "/orders/?server=1" if proxied else "/orders/")
    if status != 200:
        raise RuntimeError(f"read answered {status}")
    answer = json.loads(content)
    return node_names.get(int(answer["server_port" if proxied else "port"]), "?")


def worker(
    run: Run, started: float, stop: threading.Event, names: dict[int, str], proxied: bool
) -> None:
    from django.core.handlers.wsgi import WSGIHandler
    from django.db import connections

    app = WSGIHandler()
    while not stop.is_set():
        began = time.monotonic()
        try:
            server = request_unit(app, names, proxied)
            ok = True
        except Exception:
            server, ok = None, False
        now = time.monotonic()
        with run.lock:
            run.timeline.outcomes.append((now - started, ok))
            bucket = run.seconds[int(now - started)]
            if ok:
                bucket.ok += 1
                bucket.servers[server] += 1
                if run.crashed_at and began > run.crashed_at and run.first_ok_after_crash is None:
                    run.first_ok_after_crash = now
            else:
                bucket.failed += 1
        time.sleep(0.02)
    connections.close_all()


def show_second(run: Run, second: int) -> None:
    bucket = run.seconds.get(second, Second())
    served = " ".join(f"{name}:{count}" for name, count in sorted(bucket.servers.items()))
    bar = ("#" * min(bucket.ok // 2, 30) + "x" * min(bucket.failed, 10)).ljust(40)
    events = "  <- " + ", ".join(run.events[second]) if run.events.get(second) else ""
    print(
        f"  {second:>3}s  ok {bucket.ok:>4}  failed {bucket.failed:>4}  {bar} "
        f"served by {served or '-'}{events}",
        flush=True,
    )


class LabScenario:
    """The lab's own failover: crash, a promotion 1.5 s later, a rejoin with pg_rewind."""

    default_seconds = 12.0
    retry_timeout = 10.0  # the backend's: longer than the promotion takes

    def __init__(self) -> None:
        self.cluster = Cluster.create()

    def roles(self) -> str:
        primary = self.cluster.primary
        return ", ".join(
            f"{n.name} :{n.port} ({'primary' if n is primary else 'standby'})"
            for n in self.cluster.nodes
        )

    def headline(self) -> str:
        return f"crash at {CRASH_AT:g}s, promotion {PROMOTE_AFTER:g}s later"

    def after_migrate(self) -> None:
        self.cluster.snapshot()  # reset() comes back to the migrated tables

    def reset(self) -> None:
        self.cluster.reset()

    def begin(self, run: Run, event: Callable[..., None]) -> None:
        self.old = self.cluster.primary
        self.plan = [
            (CRASH_AT, self.crash),
            (CRASH_AT + PROMOTE_AFTER, self.promote),
            (CRASH_AT + PROMOTE_AFTER + REJOIN_AFTER, self.rejoin),
        ]

    def tick(self, elapsed: float, run: Run, event: Callable[..., None]) -> None:
        if self.plan and elapsed >= self.plan[0][0]:
            _, step = self.plan.pop(0)
            step(run, event)

    def crash(self, run: Run, event: Callable[..., None]) -> None:
        killed = time.monotonic()  # kill -9 of every process takes a while on a busy machine
        self.cluster.crash(self.old)
        run.crashed_at = time.monotonic()
        event(f"kill -9 {self.old.name} (primary)", at=killed)

    def promote(self, run: Run, event: Callable[..., None]) -> None:
        new = self.cluster.promote()
        run.promoted_at = time.monotonic()
        self.cluster.follow()
        event(f"promoted {new.name}", at=run.promoted_at)

    def rejoin(self, run: Run, event: Callable[..., None]) -> None:
        self.cluster.rejoin(self.old)
        event(f"{self.old.name} back as a standby (pg_rewind)")

    def end(self) -> None:
        pass


class PatroniScenario:
    """Patroni's failover: the leader's machine dies, Patroni alone elects a new leader."""

    retry_timeout = 30.0  # longer than Patroni's ttl (20 s) + loop_wait (1 s)

    def __init__(self, proxy: str | None = None) -> None:
        self.cluster = PatroniCluster.create()
        # Long enough for the ttl, the promotion and the rejoin to show.
        self.default_seconds = CRASH_AT + self.cluster.ttl + 12.0
        self.haproxy = self.cluster.start_haproxy() if proxy == "haproxy" else None

    def roles(self) -> str:
        leader = self.cluster.leader()
        return ", ".join(
            f"{m.name} :{m.port} ({'leader' if m is leader else 'replica'})"
            for m in self.cluster.members
        )

    def headline(self) -> str:
        through = (
            f"; through HAProxy {self.haproxy.host} (checks /primary every 0.5 s)"
            if self.haproxy
            else ""
        )
        return (
            f"the leader's node killed at {CRASH_AT:g}s; Patroni fails over once its lock "
            f"expires (ttl {self.cluster.ttl}s){through}"
        )

    def after_migrate(self) -> None:
        pass

    def reset(self) -> None:
        self.cluster.reset()

    def begin(self, run: Run, event: Callable[..., None]) -> None:
        self.old = self.cluster.leader()
        self.watch = LeaderWatch(self.cluster).start()
        self.reported = 1  # the first change is the leader the run starts with
        self.took_writes: float | None = None
        self.rejoined = False
        self.routes = self.haproxy.routes_to() if self.haproxy else set()

    def tick(self, elapsed: float, run: Run, event: Callable[..., None]) -> None:
        if run.crashed_at is None and elapsed >= CRASH_AT:
            self.cluster.kill_node(self.old)
            run.crashed_at = time.monotonic()
            event(f"kill -9 {self.old.name} (leader: Patroni agent and PostgreSQL)")
        if self.haproxy is not None and (routes := self.haproxy.routes_to()) != self.routes:
            self.routes = routes
            event(f"HAProxy routes to {', '.join(sorted(routes)) or 'no member'}")
        for change in self.watch.changes[self.reported :]:
            if change.leader is None:
                event("Patroni: no leader", at=change.at)
                self.reported += 1
            elif change.writable is not None:  # only once its server took writes
                event(f"Patroni: leader {change.leader}", at=change.at)
                event(f"{change.leader} takes writes", at=change.writable)
                self.reported += 1
                if change.leader != self.old.name and self.took_writes is None:
                    self.took_writes = run.promoted_at = change.writable
                    run.patroni_failover = change.writable - run.crashed_at
        if self.took_writes and not self.rejoined and time.monotonic() >= self.took_writes + 3:
            self.rejoined = True
            event(f"{self.old.name}'s machine back: its agent starts")
            self.cluster.rejoin(self.old)  # Patroni rewinds it if it must
            event(f"{self.old.name} streams from the new leader")

    def end(self) -> None:
        self.watch.stop()


def play(run: Run, scenario: LabScenario | PatroniScenario, seconds: float, workers: int) -> None:
    names = {node.port: node.name for node in scenario.cluster.nodes}
    proxied = getattr(scenario, "haproxy", None) is not None
    stop = threading.Event()
    started = time.monotonic()
    threads = [
        threading.Thread(target=worker, args=(run, started, stop, names, proxied))
        for _ in range(workers)
    ]
    for thread in threads:
        thread.start()

    def event(text: str, at: float | None = None) -> None:
        since = (at or time.monotonic()) - started
        run.events[int(since)].append(text)
        run.timeline.marks.append((since, text))

    shown = 0
    scenario.begin(run, event)
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            scenario.tick(elapsed, run, event)
            # A second is shown once it is over (and Patroni's view of it is in).
            while shown < int(elapsed) - 1:
                show_second(run, shown)
                shown += 1
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        scenario.end()
    # A step still running at the end (a slow rejoin) finishes in a later second:
    # show that one too.
    last = max([int(seconds) - 1, *run.events])
    while shown <= last:
        show_second(run, shown)
        shown += 1


def summary(run: Run) -> str:
    recovered = (
        f"{run.first_ok_after_crash - run.crashed_at:.2f}s after the crash"
        if run.first_ok_after_crash and run.crashed_at
        else "never"
    )
    patroni = (
        f" (Patroni's new leader took writes {run.patroni_failover:.2f}s after it)"
        if run.patroni_failover is not None
        else ""
    )
    return (
        f"{run.label:<28} requests ok {run.ok:>5}   failed {run.failed:>4}   "
        f"first request started after the crash served {recovered}{patroni}"
    )


def use_backend(
    stock: bool, cluster: Cluster | PatroniCluster, retry_timeout: float, proxied: bool = False
) -> None:
    """Point the default alias at the lab with this backend or with Django's own
    (``proxied``: at the Patroni lab's HAProxy)."""
    from django.db import connections

    options = {"connect_timeout": 2}
    if not stock:
        options["failover"] = {"retry_timeout": retry_timeout}
    if proxied:
        assert isinstance(cluster, PatroniCluster)
        database = cluster.proxy_database(stock=stock, OPTIONS=options)
    else:
        database = cluster.django_database(stock=stock, OPTIONS=options)
    connections.close_all()
    connections.settings["default"] = connections.configure_settings({"default": database})[
        "default"
    ]
    with suppress(AttributeError):  # no connection made in this thread yet
        del connections["default"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--orchestrator",
        choices=["lab", "patroni"],
        default="lab",
        help="who promotes a standby: the lab itself, or Patroni (with etcd)",
    )
    parser.add_argument(
        "--proxy",
        choices=["haproxy"],
        help="with --orchestrator patroni: reach the servers through HAProxy, steered by "
        "Patroni's REST /primary",
    )
    parser.add_argument("--seconds", type=float, help="per run (default: 12, Patroni 35)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--no-stock", action="store_true", help="skip the stock-backend run")
    parser.add_argument(
        "--picture",
        type=Path,
        default=Path("failover-demo"),
        metavar="STEM",
        help="draw the timelines into STEM.png and STEM.svg (default: %(default)s)",
    )
    parser.add_argument("--no-picture", dest="picture", action="store_const", const=None)
    args = parser.parse_args()
    if args.proxy and args.orchestrator != "patroni":
        parser.error("--proxy haproxy goes with --orchestrator patroni (its checks ask Patroni)")

    if args.orchestrator == "patroni":
        print("Starting Patroni, etcd and three PostgreSQL servers on loopback...", flush=True)
        scenario: LabScenario | PatroniScenario = PatroniScenario(args.proxy)
    else:
        print("Starting the lab: a primary and two streaming standbys on loopback...", flush=True)
        scenario = LabScenario()
    cluster = scenario.cluster
    seconds = args.seconds or scenario.default_seconds
    with cluster:
        install = cluster.nodes[0].install if isinstance(cluster, Cluster) else None
        install = install or cluster.members[0].pg.install
        print(f"PostgreSQL {install.major} ({install.source}): {scenario.roles()}", flush=True)
        os.environ["DJANGO_SETTINGS_MODULE"] = "testproject.settings"
        proxy = getattr(scenario, "haproxy", None)
        os.environ["DATABASE_URL"] = cluster.database_url(hosts=[proxy.host] if proxy else None)
        import django
        from django.core.management import call_command
        from django.db import connections

        django.setup()
        # The timeline tells the story; log lines (the backend's, and Django's
        # tracebacks for failed requests) would drown it.
        logging.getLogger("django_pg_failover").setLevel(logging.ERROR)
        logging.getLogger("django.request").setLevel(logging.CRITICAL)
        call_command("migrate", verbosity=0)
        connections.close_all()
        scenario.after_migrate()

        runs = [Run("django_pg_failover")]
        if not args.no_stock:
            runs.append(Run("Django's postgresql backend"))
        for run in runs:
            if run is not runs[0]:
                scenario.reset()
            use_backend(run is not runs[0], cluster, scenario.retry_timeout, proxy is not None)
            print(
                f"\n{run.label}: {args.workers} workers, each request writes an order and "
                f"lists orders; {scenario.headline()}",
                flush=True,
            )
            play(run, scenario, seconds, args.workers)
        connections.close_all()

    print("\nSummary")
    for run in runs:
        print("  " + summary(run))
    if args.picture is not None:
        try:
            paths = draw(
                [run.timeline for run in runs],
                f"{scenario.headline()}: {args.workers} workers, requests per 100 ms",
                args.picture,
            )
        except PictureUnavailable as exc:
            print(exc)
        else:
            print("Picture: " + ", ".join(str(path) for path in paths))
    print("Everything the demo started has been stopped.")
    return 0 if runs[0].failed <= args.workers else 1


if __name__ == "__main__":
    sys.exit(main())
