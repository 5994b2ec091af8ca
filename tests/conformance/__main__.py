"""Django's own test suite, unchanged, on Django's backend and on this one: equal, test by test.

    python -m tests.conformance [--apps APP ...] [--driver psycopg|psycopg2] [--parallel N]

Fetches the sdist of the installed Django (cached in .conformance/), starts a
lab (a primary and two standbys on loopback), and runs Django's runtests.py
for the database-related apps with ``--parallel``, once with
``django.db.backends.postgresql`` and once with ``django_pg_failover``, both
listing the same servers: a closed port, the standbys, then the primary. It
prints each run's counts per outcome, every test whose outcome differs, and
every test that failed on both; it exits 1 on any difference that
known.py does not expect. ``--driver`` may be given twice; by default the
suite runs on psycopg 3 and on psycopg2 (with psycopg 3 hidden from the
runtests processes, as ``pytest --driver=psycopg2`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from django_pg_failover.lab import APP_USER, Cluster, find_install

from . import settings, suite
from .compare import Row, compare, format_counts, format_row
from .results import RunResult, parse

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / ".conformance"
HIDDEN_PSYCOPG = REPO / "tests" / "hidden_psycopg"
DRIVERS = ("psycopg", "psycopg2")
# The apps of Django's suite that exercise a database backend (issue 13).
DEFAULT_APPS = (
    "backends",
    "transactions",
    "transaction_hooks",
    "queries",
    "basic",
    "model_fields",
    "postgres_tests",
    "migrations",
    "select_for_update",
    "test_runner",
    "test_utils",
    "dbshell",
    "db_functions",
    "aggregation",
    "expressions",
    "fixtures",
    "schema",
    "introspection",
    "inspectdb",
    "indexes",
    "constraints",
    "bulk_create",
    "get_or_create",
    "update",
    "delete",
    "raw_query",
    "async",
)
TRACEBACK_LINES = 12


@dataclass
class Run:
    backend: str
    result: RunResult
    seconds: float
    returncode: int | None
    log: Path

    def problem(self) -> str | None:
        if self.returncode is None:
            return f"killed after {self.seconds:.0f}s (--timeout)"
        return self.result.completeness_problem()


@dataclass(frozen=True)
class Context:
    """What every runtests.py run of one conformance run shares."""

    args: argparse.Namespace
    tests_dir: Path
    #: The folder on the runtests processes' path (see python_path()).
    path: Path
    logs: Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.conformance", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--apps",
        nargs="+",
        default=list(DEFAULT_APPS),
        metavar="APP",
        help="test labels for runtests.py (apps, or app.tests.Class...; commas work too); "
        "'all' runs Django's whole suite. Default: the database-related apps",
    )
    parser.add_argument(
        "--driver",
        action="append",
        choices=DRIVERS,
        dest="drivers",
        help="the driver of both backends (may be given twice; default: both, in turn)",
    )
    parser.add_argument("--parallel", type=int, default=2, help="runtests.py --parallel (2)")
    parser.add_argument("--pg-version", type=int, help="the lab's PostgreSQL major version")
    parser.add_argument(
        "--timeout", type=float, default=3600, help="seconds one runtests.py run may take"
    )
    args = parser.parse_args(argv)
    args.apps = [app for apps in args.apps for app in apps.split(",") if app]
    if args.apps == ["all"]:
        args.apps = []
    args.drivers = args.drivers or list(DRIVERS)
    return args


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections, held so that nothing else takes it."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((settings.LOOPBACK, 0))  # bound, never listening: connect() is refused
        yield sock.getsockname()[1]


def python_path() -> Path:
    """A folder holding the package on its own, for the runtests processes.

    Django's admin_scripts tests put the folder that holds a third-party
    backend on their subprocesses' path; the repository root would bring
    testproject/ along (see known.py). Settings modules are written here too.
    """
    folder = WORK / "path"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "django_pg_failover"
    if not (link.is_symlink() and link.resolve() == REPO / "django_pg_failover"):
        link.unlink(missing_ok=True)
        link.symlink_to(REPO / "django_pg_failover", target_is_directory=True)
    return folder


def prepare_lab(cluster: Cluster) -> None:
    """What Django's suite needs from the lab, the same for both backends."""
    primary = cluster.primary
    # As Django's CI runs its suite: postgres_tests creates the bloom extension,
    # which only a superuser may create.
    primary.query(f"ALTER ROLE {APP_USER} SUPERUSER")
    # Commits return once every standby has applied them. Otherwise a standby
    # listed before the primary may not know yet a test database the primary
    # has just created: libpq (psycopg2) stops at its "database does not exist"
    # instead of trying the next host, and the stock backend's run dies while
    # it sets up its databases.
    primary.query(f"ALTER SYSTEM SET synchronous_standby_names = 'ANY {len(cluster.standbys)} (*)'")
    primary.query("ALTER SYSTEM SET synchronous_commit = 'remote_apply'")
    primary.query("SELECT pg_reload_conf()")


def runtests_env(driver: str, path: Path) -> dict[str, str]:
    # libpq reads PG* variables (PGSERVICE, PGSSLMODE...): the run must not depend on the shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    entries = [str(path)]
    if driver == "psycopg2":
        entries.insert(0, str(HIDDEN_PSYCOPG))
    env["PYTHONPATH"] = os.pathsep.join(entries)
    return env


def check_environment(driver: str, env: dict[str, str], tests_dir: Path, path: Path) -> str:
    """The driver the runtests processes will use, after checking they import our package."""
    probe = (
        "import django_pg_failover; from django_pg_failover.drivers import get_driver; "
        "print(get_driver().name); print(get_driver().label()); print(django_pg_failover.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tests_dir, env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"the runtests environment for {driver} is broken:\n{out.stderr}")
    name, label, package = out.stdout.splitlines()
    if name != driver:
        raise SystemExit(f"asked for {driver}, the runtests processes would use {name}")
    if not package.startswith(str(path)):
        raise SystemExit(f"runtests would import django_pg_failover from {package}, not {path}")
    return label


def runtests(
    tests_dir: Path, module: str, args: argparse.Namespace, env: dict[str, str], log: Path
) -> tuple[int | None, float]:
    command = [
        sys.executable,
        "runtests.py",
        f"--settings={module}",
        f"--parallel={args.parallel}",
        "--noinput",
        "--verbosity=2",
        *args.apps,
    ]
    started = time.monotonic()
    # unittest writes its verbose lines to stderr: they get a file of their own.
    with open(log.with_suffix(".out"), "w") as out, open(log, "w") as err:
        process = subprocess.Popen(
            command, cwd=tests_dir, env=env, stdout=out, stderr=err, start_new_session=True
        )
        try:
            returncode: int | None = process.wait(args.timeout)
        except subprocess.TimeoutExpired:
            returncode = None
            stop(process)
        except BaseException:
            stop(process)
            raise
    return returncode, time.monotonic() - started


def stop(process: subprocess.Popen) -> None:
    """Stop runtests and its parallel workers (they share its process group)."""
    for signum, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            break
        try:
            process.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue


def run_backend(
    backend: str, driver: str, module: str, env: dict[str, str], context: Context
) -> Run:
    log = context.logs / f"{driver}-{backend}.log"
    print(f"  {backend:5} {settings.BACKENDS[backend]}: running (log: {log})", flush=True)
    returncode, seconds = runtests(context.tests_dir, module, context.args, env, log)
    run = Run(backend, parse(log.read_text(errors="replace")), seconds, returncode, log)
    print(f"  {backend:5} {format_counts(run.result)}; {seconds:.0f}s", flush=True)
    return run


def run_driver(driver: str, modules: dict[str, str], context: Context) -> tuple[bool, dict]:
    """Both backends on ``driver``: whether they came out equal, and their figures."""
    env = runtests_env(driver, context.path)
    print(f"\n{check_environment(driver, env, context.tests_dir, context.path)}")
    runs = {
        backend: run_backend(backend, driver, module, env, context)
        for backend, module in modules.items()
    }
    rows = compare(runs["stock"].result, runs["ours"].result)
    figures: dict = {
        backend: {
            "counts": {o.value: n for o, n in run.result.counts().items()},
            "seconds": round(run.seconds),
        }
        for backend, run in runs.items()
    }
    figures["differences"] = [format_row(row) for row in rows if row.differs]
    return report(runs, rows), figures


def report(runs: dict[str, Run], rows: list[Row]) -> bool:
    """Print what differs and what failed on both; True when the driver's run is conformant."""
    ok = True
    for run in runs.values():
        problem = run.problem()
        if problem:
            ok = False
            print(f"  {run.backend}: incomplete run: {problem} (log: {run.log})")
    differences = [row for row in rows if row.differs]
    both = [row for row in rows if not row.differs]
    if differences:
        print(f"  outcomes that differ ({len(differences)}):")
        for row in differences:
            print(f"    {format_row(row)}")
            text = runs["ours"].result.reports.get(row.test) or runs["stock"].result.reports.get(
                row.test, ""
            )
            for line in text.splitlines()[-TRACEBACK_LINES:]:
                print(f"      | {line}")
    else:
        print("  outcomes that differ: none")
    if both:
        print(f"  failed on both backends ({len(both)}), not a difference:")
        for row in both:
            print(f"    {format_row(row)}")
    return ok and not any(row.is_failure for row in rows)


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (a CI timeout, `kill`) stops runtests and the lab as Ctrl-C does.
    signal.signal(signal.SIGTERM, interrupt)
    version = suite.django_version()
    tests_dir = suite.extract_tests(
        suite.fetch_sdist(WORK / "sdist", version), WORK / f"django-{version}"
    )
    installed = suite.install_extras()
    if installed:
        print(f"installed for Django's tests: {', '.join(installed)}")
    context = Context(args, tests_dir, python_path(), WORK / "logs")
    context.logs.mkdir(exist_ok=True)
    install = find_install(args.pg_version)
    apps = " ".join(args.apps) or "all"
    print(f"Django {version} tests ({tests_dir}), --parallel {args.parallel}, apps: {apps}")
    started = time.monotonic()
    summary: dict[str, dict] = {}
    conformant = True
    with closed_port() as port, Cluster.create(install=install) as cluster:
        prepare_lab(cluster)
        ports = settings.host_ports(cluster, port)
        print(
            f"lab: PostgreSQL {install.major} ({install.source}); hosts in order: "
            f"closed port {port}, standbys {ports[1:-1]}, primary {ports[-1]}"
        )
        modules = {
            backend: settings.write_module(
                context.path, backend, settings.databases(cluster, backend, ports)
            )
            for backend in settings.BACKENDS
        }
        for driver in args.drivers:
            equal, summary[driver] = run_driver(driver, modules, context)
            conformant &= equal
    (WORK / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    verdict = "equal to stock, test for test" if conformant else "NOT equal to stock"
    print(f"\nconformance: {verdict} ({time.monotonic() - started:.0f}s)")
    return 0 if conformant else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:
        # runtests and the lab are stopped by now.
        sys.exit(f"conformance: interrupted ({exc or 'Ctrl-C'})")
