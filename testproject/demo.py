"""The failover demo: a Django site keeps serving while its database server dies.

    python testproject/demo.py [--seconds 12] [--workers 4] [--no-stock]

Starts a lab (a primary and two streaming standbys on loopback; the system's
PostgreSQL, or the embedded one), migrates this project, and sends a steady
load of requests through Django's full request cycle. Then it crashes the
primary, promotes a standby, and brings the old primary back as a standby with
pg_rewind, printing one line per second: requests ok and failed, and which
server answered. The same run with Django's stock backend follows, for
contrast. Everything it started is stopped at the end.
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
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from wsgiref.util import setup_testing_defaults

sys.path.insert(0, str(Path(__file__).resolve().parent))

from django_pg_failover.lab import Cluster

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
    lock: threading.Lock = field(default_factory=threading.Lock)

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
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
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


def request_unit(app, node_names: dict[int, str]) -> str:
    """One page view that writes, then one that reads: through Django's whole stack."""
    status, _ = call(app, "POST", "/orders/", {"key": uuid.uuid4().hex})
    if status != 201:
        raise RuntimeError(f"write answered {status}")
    status, content = call(app, "GET", "/orders/")
    if status != 200:
        raise RuntimeError(f"read answered {status}")
    return node_names.get(json.loads(content)["port"], "?")


def worker(run: Run, started: float, stop: threading.Event, names: dict[int, str]) -> None:
    from django.core.handlers.wsgi import WSGIHandler
    from django.db import connections

    app = WSGIHandler()
    while not stop.is_set():
        began = time.monotonic()
        try:
            server = request_unit(app, names)
            ok = True
        except Exception:
            server, ok = None, False
        now = time.monotonic()
        with run.lock:
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


def play(run: Run, cluster: Cluster, seconds: float, workers: int) -> None:
    names = {node.port: node.name for node in cluster.nodes}
    stop = threading.Event()
    started = time.monotonic()
    threads = [
        threading.Thread(target=worker, args=(run, started, stop, names)) for _ in range(workers)
    ]
    for thread in threads:
        thread.start()

    def event(text: str) -> None:
        run.events[int(time.monotonic() - started)].append(text)

    shown = 0
    plan = [
        (CRASH_AT, "crash"),
        (CRASH_AT + PROMOTE_AFTER, "promote"),
        (CRASH_AT + PROMOTE_AFTER + REJOIN_AFTER, "rejoin"),
    ]
    old = cluster.primary
    # Every step of the plan happens, and is shown, however slow the machine.
    while (elapsed := time.monotonic() - started) < seconds or plan:
        if plan and elapsed >= plan[0][0]:
            _, step = plan.pop(0)
            if step == "crash":
                cluster.crash(old)
                run.crashed_at = time.monotonic()
                event(f"kill -9 {old.name} (primary)")
            elif step == "promote":
                new = cluster.promote()
                run.promoted_at = time.monotonic()
                cluster.follow()
                event(f"promoted {new.name}")
            else:
                cluster.rejoin(old)
                event(f"{old.name} back as a standby (pg_rewind)")
        while shown < int(elapsed):
            show_second(run, shown)
            shown += 1
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(30)
    last = max(int(seconds) - 1, *run.events)
    while shown <= last:
        show_second(run, shown)
        shown += 1


def summary(run: Run) -> str:
    recovered = (
        f"{run.first_ok_after_crash - run.crashed_at:.2f}s after the crash"
        if run.first_ok_after_crash and run.crashed_at
        else "never"
    )
    return (
        f"{run.label:<28} requests ok {run.ok:>5}   failed {run.failed:>4}   "
        f"first request started after the crash served {recovered}"
    )


def use_backend(stock: bool, cluster: Cluster) -> None:
    """Point the default alias at the lab with this backend or with Django's own."""
    from django.db import connections

    options = {"connect_timeout": 2}
    if not stock:
        options["failover"] = {"retry_timeout": 10}
    database = cluster.django_database(stock=stock, OPTIONS=options)
    connections.close_all()
    connections.settings["default"] = connections.configure_settings({"default": database})[
        "default"
    ]
    with suppress(AttributeError):  # no connection made in this thread yet
        del connections["default"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--no-stock", action="store_true", help="skip the stock-backend run")
    args = parser.parse_args()

    print("Starting the lab: a primary and two streaming standbys on loopback...", flush=True)
    with Cluster.create() as cluster:
        install = cluster.primary.install
        print(
            f"PostgreSQL {install.major} ({install.source}): "
            + ", ".join(
                f"{n.name} :{n.port} ({'primary' if n is cluster.primary else 'standby'})"
                for n in cluster.nodes
            ),
            flush=True,
        )
        os.environ["DJANGO_SETTINGS_MODULE"] = "testproject.settings"
        os.environ["DATABASE_URL"] = cluster.database_url()
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
        cluster.snapshot()

        runs = [Run("django_pg_failover")]
        if not args.no_stock:
            runs.append(Run("Django's postgresql backend"))
        for run in runs:
            if run is not runs[0]:
                cluster.reset()
            use_backend(stock=run is not runs[0], cluster=cluster)
            print(
                f"\n{run.label}: {args.workers} workers, each request writes an order and "
                f"lists orders; crash at {CRASH_AT:g}s, promotion {PROMOTE_AFTER:g}s later",
                flush=True,
            )
            play(run, cluster, args.seconds, args.workers)
        connections.close_all()

    print("\nSummary")
    for run in runs:
        print("  " + summary(run))
    print("Everything the demo started has been stopped.")
    return 0 if runs[0].failed <= args.workers else 1


if __name__ == "__main__":
    sys.exit(main())
