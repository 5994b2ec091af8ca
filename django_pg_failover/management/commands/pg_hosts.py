"""``manage.py pg_hosts``: every host of a database alias, and the one it would use now.

Each host gets its own connection (``target_session_attrs=any``), all at once,
so that a hung host costs the command ``--timeout`` seconds, not one timeout
per host. The exit status is 0 when a host matching the alias's
``target_session_attrs`` answered, 1 otherwise: the command works as a
container health check.

``--json`` prints one object::

    {
      "alias": "default",
      "target_session_attrs": "read-write",
      "would_connect": "127.0.0.1:5433",        # or null
      "hosts": [                                # in the order libpq would try them
        {
          "host": "127.0.0.1",
          "port": 5433,
          "reachable": true,
          "role": "primary",                    # "standby"; null when unreachable
          "read_only": false,                   # new sessions are read-only; null
          "error": null,                        # libpq's reason when unreachable
          "server_version": "15.18",
          "replay_lag_bytes": null,             # standbys: behind the primary's WAL
          "replay_lag_seconds": null,           # standbys: since the last replayed commit
          "rtt_ms": 0.412,                      # a SELECT 1
          "would_connect": true
        }
      ]
    }

``replay_lag_bytes`` is the first reachable primary's ``pg_current_wal_lsn()``
minus the standby's ``pg_last_wal_replay_lsn()``; ``replay_lag_seconds`` is
the standby's ``now() - pg_last_xact_replay_timestamp()``, which also grows
while the primary commits nothing, and is null before the standby replayed a
commit. The table says so under it when a standby has nothing left to replay
(LAG BYTES 0) and its LAG SECONDS is 1 or more.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections

from django_pg_failover import ENGINE
from django_pg_failover.base import DatabaseWrapper
from django_pg_failover.connecting import password as with_password
from django_pg_failover.connecting.attempt import one_host_params
from django_pg_failover.connecting.verdicts import server_message, unexpected_failure
from django_pg_failover.drivers import Driver
from django_pg_failover.management.hostreport import (
    PRIMARY,
    STANDBY,
    HostReport,
    first_primary,
    format_server_version,
    replay_lag_bytes,
    would_connect,
)
from django_pg_failover.settings.hosts import Host
from django_pg_failover.settings.password import PasswordProvider, PasswordProviderError

DEFAULT_TIMEOUT = 2
# How long a look at one host may take past the connect timeout for its two queries.
QUERY_GRACE = 1.0

# One round trip for everything but the RTT. pg_current_wal_lsn() fails on a
# standby; CASE evaluates only the branch it takes.
STATE_SQL = """
SELECT pg_is_in_recovery(),
       current_setting('transaction_read_only')::boolean,
       (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
             ELSE pg_current_wal_lsn() END)::text,
       EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8
"""

COLUMNS = (
    "HOST",
    "PORT",
    "REACHABLE",
    "ROLE",
    "VERSION",
    "LAG BYTES",
    "LAG SECONDS",
    "RTT MS",
    "WOULD CONNECT",
)
NUMERIC_COLUMNS = frozenset({"PORT", "LAG BYTES", "LAG SECONDS", "RTT MS"})


class Command(BaseCommand):
    help = (
        "Probe every host of a django_pg_failover database alias at once: reachable, role, "
        "server version, replay lag, round-trip time, and the host the alias would connect "
        "to now. Exits with status 1 when no host matches the alias's target_session_attrs."
    )
    # A health check: quick, and not failed by another app's system check.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database",
            default=DEFAULT_DB_ALIAS,
            help='The database alias to report. Defaults to the "default" database.',
        )
        parser.add_argument(
            "--timeout",
            type=int,
            default=DEFAULT_TIMEOUT,
            help=f"libpq's connect_timeout for each host, in whole seconds "
            f"(at least 1; default {DEFAULT_TIMEOUT}).",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help='Print one JSON object: {"alias", "target_session_attrs", "would_connect": '
            '"host:port" or null, "hosts": [{"host", "port", "reachable", "role", "read_only", '
            '"error", "server_version", "replay_lag_bytes", "replay_lag_seconds", "rtt_ms", '
            '"would_connect"}]}.',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alias, timeout = options["database"], options["timeout"]
        if timeout < 1:
            # libpq reads 0 and below as "wait forever": a health check must not.
            raise CommandError(f"--timeout must be a whole number of seconds >= 1, not {timeout}")
        connection = failover_connection(alias)
        try:
            report, chosen = look(connection, timeout)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        target_session_attrs = report["target_session_attrs"]
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2))
        else:
            self.stdout.write(render_table(report["hosts"]))
            note = idle_lag_note(report["hosts"])
            if note:
                self.stdout.write(note)
            if chosen is not None:
                self.stdout.write(f"would connect to {chosen.host} ({chosen.role})")
        if chosen is None:
            raise CommandError(f"no host matches target_session_attrs={target_session_attrs}")


def failover_connection(alias: str) -> DatabaseWrapper:
    if alias not in connections.settings:
        raise CommandError(f"The database alias {alias!r} is not in DATABASES.")
    connection = connections[alias]
    if not isinstance(connection, DatabaseWrapper):
        raise CommandError(
            f"Database alias {alias!r} uses ENGINE {connection.settings_dict['ENGINE']!r}; "
            f"pg_hosts needs ENGINE {ENGINE!r}."
        )
    return connection


# -- probing ---------------------------------------------------------------------


def look(connection: DatabaseWrapper, timeout: int) -> tuple[dict[str, Any], HostReport | None]:
    """One look at every host of the alias: the ``--json`` object, and the host it would use.

    What the command prints and what the health check (:mod:`django_pg_failover.health`)
    judges: one source for both. Raises ImproperlyConfigured for bad settings.
    """
    conn_params = connection.failover_connection_params()
    target_session_attrs = conn_params["target_session_attrs"]
    # The order the backend would try them now (host status memory applied).
    hosts = connection.connector.ordered_hosts()
    reports = report_hosts(
        hosts, conn_params, timeout, connection.driver, connection.failover_settings.password
    )
    chosen = would_connect(reports, target_session_attrs)
    return build_report(connection.alias, target_session_attrs, reports, chosen), chosen


def report_hosts(
    hosts: Sequence[Host],
    conn_params: Mapping[str, Any],
    timeout: int,
    driver: Driver,
    password: PasswordProvider | None = None,
) -> list[HostReport]:
    """Probe every host in its own thread; give up on those still busy after the timeout.

    The threads are daemons: one stuck on a host that stopped answering after
    it connected must not keep the process alive; it closes its connection
    whenever the host lets it finish.
    """
    results: dict[Host, HostReport] = {}
    crashes: list[BaseException] = []

    def run(host: Host) -> None:
        try:
            params = one_host_params(conn_params, host, timeout)
            results[host] = report_host(host, params, driver, password)
        except Exception as exc:  # a bug: raised again below, not lost in the thread
            crashes.append(exc)

    threads = [
        threading.Thread(target=run, args=(host,), name=f"pg_hosts {host}", daemon=True)
        for host in hosts
    ]
    wait = driver.connect_wait(timeout) + QUERY_GRACE
    deadline = time.monotonic() + wait
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
    if crashes:
        raise crashes[0]
    return [
        results.get(host) or HostReport(host, reachable=False, error=f"no answer within {wait:g}s")
        for host in hosts
    ]


def report_host(
    host: Host,
    params: Mapping[str, Any],
    driver: Driver,
    password: PasswordProvider | None = None,
) -> HostReport:
    """Connect straight to one host, time a ``SELECT 1``, and read its replication state."""
    try:
        connection = with_password.connect(driver, params, password)
    except PasswordProviderError as exc:
        return HostReport(host, reachable=False, error=exc.reason)
    except driver.module.Error as exc:
        return HostReport(
            host, reachable=False, error=server_message(driver.connect_failure_reason(exc))
        )
    except Exception as exc:  # not the driver's: this host's failure, not the command's
        return HostReport(host, reachable=False, error=unexpected_failure(exc))
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            started = time.perf_counter()
            cursor.execute("SELECT 1")
            cursor.fetchone()
            rtt_ms = (time.perf_counter() - started) * 1000
            cursor.execute(STATE_SQL)
            in_recovery, read_only, wal_lsn, replay_age = cursor.fetchone()
        server_version = connection.info.server_version  # 0 once closed
    except driver.module.Error as exc:  # e.g. the server shut down under the look
        return HostReport(
            host, reachable=False, error=server_message(driver.connect_failure_reason(exc))
        )
    finally:
        connection.close()
    return HostReport(
        host,
        reachable=True,
        role=STANDBY if in_recovery else PRIMARY,
        read_only=read_only,
        server_version=format_server_version(server_version),
        wal_lsn=wal_lsn,
        # A promoted primary still reports its last replayed commit: not lag.
        replay_lag_seconds=replay_age if in_recovery else None,
        rtt_ms=rtt_ms,
    )


# -- reporting ---------------------------------------------------------------------


def build_report(
    alias: str,
    target_session_attrs: str,
    reports: Sequence[HostReport],
    chosen: HostReport | None,
) -> dict[str, Any]:
    """The ``--json`` object; the table is drawn from it too."""
    primary = first_primary(reports)
    return {
        "alias": alias,
        "target_session_attrs": target_session_attrs,
        "would_connect": str(chosen.host) if chosen is not None else None,
        "hosts": [
            {
                "host": report.host.host,
                "port": report.host.port,
                "reachable": report.reachable,
                "role": report.role,
                "read_only": report.read_only,
                "error": report.error,
                "server_version": report.server_version,
                "replay_lag_bytes": replay_lag_bytes(report, primary),
                "replay_lag_seconds": _rounded(report.replay_lag_seconds),
                "rtt_ms": _rounded(report.rtt_ms),
                "would_connect": report is chosen,
            }
            for report in reports
        ],
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def render_table(hosts: Sequence[Mapping[str, Any]]) -> str:
    """Aligned columns under a header; an unreachable host's ROLE is why."""
    rows = [COLUMNS, *(_table_row(host) for host in hosts)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if name in NUMERIC_COLUMNS else cell.ljust(width)
            for name, cell, width in zip(COLUMNS, row, widths, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _table_row(host: Mapping[str, Any]) -> tuple[str, ...]:
    if host["reachable"]:
        role = host["role"]
        if role == PRIMARY and host["read_only"]:
            role += " (read-only)"  # fenced: read-write sessions are refused
    else:
        role = host["error"]
    return (
        host["host"],
        str(host["port"]),
        "yes" if host["reachable"] else "no",
        role,
        host["server_version"] or "-",
        _cell(host["replay_lag_bytes"], "{}"),
        _cell(host["replay_lag_seconds"], "{:.3f}"),
        _cell(host["rtt_ms"], "{:.2f}"),
        "*" if host["would_connect"] else "",
    )


#: A standby's LAG SECONDS counts from its last replayed commit: past this, on a
#: standby with nothing left to replay, the table says why the figure grows.
IDLE_LAG_NOTE_SECONDS = 1.0


def idle_lag_note(hosts: Sequence[Mapping[str, Any]]) -> str | None:
    """Why a caught-up standby's LAG SECONDS grows: the primary commits nothing.

    Operators read a growing LAG SECONDS as a standby falling behind; with LAG
    BYTES at 0 it has replayed everything the primary wrote, and the seconds
    only count from the last commit there was to replay.
    """
    idle = [
        f"{host['host']}:{host['port']}"
        for host in hosts
        if host["replay_lag_bytes"] == 0
        and host["replay_lag_seconds"] is not None
        and host["replay_lag_seconds"] >= IDLE_LAG_NOTE_SECONDS
    ]
    if not idle:
        return None
    return (
        f"note: LAG BYTES 0 on {', '.join(idle)}: replayed all the primary wrote. "
        "LAG SECONDS counts from the last commit replayed and grows while the primary "
        "commits nothing: not a standby falling behind."
    )


def _cell(value: float | None, template: str) -> str:
    return "-" if value is None else template.format(value)
