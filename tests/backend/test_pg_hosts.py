"""``manage.py pg_hosts`` against the lab: every host's state, and the one an alias would use."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from django_pg_failover.drivers import get_driver
from django_pg_failover.lab import Cluster, Node
from django_pg_failover.lab.system import wait_for
from django_pg_failover.management.hostreport import format_server_version, parse_lsn

pytestmark = pytest.mark.timeout(120)

TESTPROJECT = Path(__file__).resolve().parents[2] / "testproject"
HEADER = "HOST PORT REACHABLE ROLE VERSION LAG BYTES LAG SECONDS RTT MS WOULD CONNECT"
HOST_KEYS = {
    "host",
    "port",
    "reachable",
    "role",
    "read_only",
    "error",
    "server_version",
    "replay_lag_bytes",
    "replay_lag_seconds",
    "rtt_ms",
    "would_connect",
}


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str
    elapsed: float

    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout)

    def rows(self) -> dict[int, list[str]]:
        """The table's cells by port (cells hold single spaces; columns are two apart)."""
        lines = self.stdout.splitlines()
        assert " ".join(lines[0].split()) == HEADER
        return {
            int(cells[1]): cells
            for cells in (re.split(r"\s{2,}", line.strip()) for line in lines[1:])
            if len(cells) > 1
        }


def pg_hosts(cluster: Cluster, alias: str, *args: str) -> Outcome:
    """Run the command the way manage.py would, exit status included."""
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    started = time.monotonic()
    try:
        call_command("pg_hosts", "--database", alias, *args, stdout=stdout, stderr=stderr)
    except CommandError as exc:
        code = exc.returncode
        stderr.write(f"CommandError: {exc}\n")
    outcome = Outcome(code, stdout.getvalue(), stderr.getvalue(), time.monotonic() - started)
    assert cluster.password not in outcome.stdout + outcome.stderr
    return outcome


def by_port(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {host["port"]: host for host in report["hosts"]}


def address(node: Node) -> str:
    return f"127.0.0.1:{node.port}"


def server_version(node: Node) -> str:
    # "15.18 (Debian 15.18-1.pgdg120+1)" from a packaged server: the number leads.
    return node.scalar("SHOW server_version").split()[0]


def commit_something(cluster: Cluster) -> None:
    """A commit for the standbys to replay: their replay timestamp starts there."""
    # It must write WAL: a commit that wrote none is not flushed at once, and
    # wait_replayed() would not wait for it.
    cluster.primary.query("CREATE TABLE pg_hosts_commit (); DROP TABLE pg_hosts_commit")
    cluster.wait_replayed()


# -- every host up ---------------------------------------------------------------------


def test_all_hosts_up(cluster: Cluster, make_alias) -> None:
    alias = make_alias()
    commit_something(cluster)
    outcome = pg_hosts(cluster, alias)
    assert outcome.code == 0, outcome.stderr
    rows = outcome.rows()
    assert list(rows) == [n.port for n in cluster.nodes]  # settings order, nothing learned
    version = server_version(cluster.primary)
    primary = rows[cluster.primary.port]
    assert primary[2:7] == ["yes", "primary", version, "-", "-"]
    assert float(primary[7]) > 0
    assert primary[8] == "*"
    for standby in cluster.standbys:
        cells = rows[standby.port]
        assert cells[2:5] == ["yes", "standby", version]
        assert int(cells[5]) >= 0
        assert 0 <= float(cells[6]) < 60
        assert float(cells[7]) > 0
        assert len(cells) == 8  # not marked
    assert outcome.stdout.splitlines()[-1] == (
        f"would connect to {address(cluster.primary)} (primary)"
    )


def test_json_shape(cluster: Cluster, make_alias) -> None:
    alias = make_alias()
    commit_something(cluster)
    outcome = pg_hosts(cluster, alias, "--json")
    assert outcome.code == 0, outcome.stderr
    report = outcome.json()
    assert set(report) == {"alias", "target_session_attrs", "would_connect", "hosts"}
    assert report["alias"] == alias
    assert report["target_session_attrs"] == "read-write"
    assert report["would_connect"] == address(cluster.primary)
    assert [h["port"] for h in report["hosts"]] == [n.port for n in cluster.nodes]
    for host in report["hosts"]:
        assert set(host) == HOST_KEYS
        assert host["host"] == "127.0.0.1"
        assert type(host["port"]) is int
        assert host["reachable"] is True
        assert host["error"] is None
        assert host["server_version"] == server_version(cluster.primary)
        assert type(host["rtt_ms"]) is float
        assert host["rtt_ms"] > 0
    hosts = by_port(report)
    primary = hosts[cluster.primary.port]
    assert primary["role"] == "primary"
    assert primary["read_only"] is False
    assert primary["would_connect"] is True
    assert primary["replay_lag_bytes"] is None
    assert primary["replay_lag_seconds"] is None
    for standby in cluster.standbys:
        row = hosts[standby.port]
        assert row["role"] == "standby"
        assert row["read_only"] is True
        assert row["would_connect"] is False
        assert type(row["replay_lag_bytes"]) is int
        assert row["replay_lag_bytes"] >= 0
        assert type(row["replay_lag_seconds"]) is float
        assert 0 <= row["replay_lag_seconds"] < 60


def test_replay_lag_bytes_count_from_the_primarys_wal(cluster: Cluster, make_alias) -> None:
    alias = make_alias()
    paused, streaming = cluster.standbys
    paused.query("SELECT pg_wal_replay_pause()")
    try:
        # WAL the paused standby receives but does not replay (and nothing left behind).
        cluster.primary.query(
            "CREATE TABLE pg_hosts_lag AS SELECT g FROM generate_series(1, 20000) AS g;"
            "DROP TABLE pg_hosts_lag"
        )
        wait_for(
            lambda: paused.scalar("SELECT pg_get_wal_replay_pause_state()") == "paused",
            10,
            "replay to pause",
        )
        cluster.wait_replayed([streaming])
        behind = cluster.primary.wal_position() - paused.replay_position()
        assert behind > 100_000
        hosts = by_port(pg_hosts(cluster, alias, "--json").json())
    finally:
        paused.query("SELECT pg_wal_replay_resume()")
    # The primary only moves on, and the paused standby stays put.
    assert behind <= hosts[paused.port]["replay_lag_bytes"] < behind + 4_000_000
    assert hosts[streaming.port]["replay_lag_bytes"] < behind


def test_the_table_explains_an_idle_standbys_growing_lag_seconds(
    cluster: Cluster, make_alias
) -> None:
    alias = make_alias()
    cluster.primary.query("CREATE TABLE pg_hosts_idle (); DROP TABLE pg_hosts_idle")
    cluster.wait_replayed(cluster.standbys)
    standbys = [f"127.0.0.1:{standby.port}" for standby in cluster.standbys]
    outcomes: list[Outcome] = []

    def noted() -> bool:
        outcomes.append(pg_hosts(cluster, alias))
        note = outcomes[-1].stdout.splitlines()[-2]  # under the table, before "would connect"
        return note.startswith("note: LAG BYTES 0 on") and all(s in note for s in standbys)

    wait_for(noted, 15, "the note on idle standbys")
    assert "grows while the primary commits nothing" in outcomes[-1].stdout
    assert f"127.0.0.1:{cluster.primary.port}" not in outcomes[-1].stdout.splitlines()[-2]


# -- faults --------------------------------------------------------------------------------


def test_primary_down(cluster: Cluster, make_alias) -> None:
    alias = make_alias()
    down = cluster.crash(cluster.primary)
    outcome = pg_hosts(cluster, alias)
    assert outcome.code == 1
    assert "CommandError: no host matches target_session_attrs=read-write" in outcome.stderr
    rows = outcome.rows()
    assert rows[down.port][2:] == ["no", "Connection refused", "-", "-", "-", "-"]
    assert [rows[n.port][2:4] for n in cluster.standbys] == [["yes", "standby"]] * 2
    assert "would connect" not in outcome.stdout

    outcome = pg_hosts(cluster, alias, "--json")
    assert outcome.code == 1
    report = outcome.json()
    assert report["would_connect"] is None
    hosts = by_port(report)
    assert hosts[down.port]["reachable"] is False
    assert hosts[down.port]["role"] is None
    assert hosts[down.port]["error"] == "Connection refused"
    for standby in cluster.standbys:
        assert hosts[standby.port]["reachable"] is True
        assert hosts[standby.port]["replay_lag_bytes"] is None  # no primary to measure from


def test_hung_primary_costs_one_timeout(cluster: Cluster, make_alias) -> None:
    alias = make_alias()
    hung = cluster.hang(cluster.primary)
    outcome = pg_hosts(cluster, alias, "--json")
    assert outcome.code == 1
    assert 1.5 <= outcome.elapsed < 2 + 2
    hosts = by_port(outcome.json())
    assert hosts[hung.port]["reachable"] is False
    assert "timeout" in hosts[hung.port]["error"]
    assert all(hosts[n.port]["reachable"] for n in cluster.standbys)


def test_hosts_are_probed_concurrently(cluster: Cluster, make_alias) -> None:
    alias = make_alias()
    for node in cluster.nodes:
        cluster.hang(node)
    outcome = pg_hosts(cluster, alias)
    assert outcome.code == 1
    # One after the other, three hung hosts would take 6 s.
    assert 1.5 <= outcome.elapsed < 2 + 2
    rows = outcome.rows()
    assert [rows[n.port][2:4] for n in cluster.nodes] == [["no", "timeout expired"]] * 3


def test_timeout_option(cluster: Cluster, make_alias) -> None:
    alias = make_alias()
    hung = cluster.hang(cluster.standbys[0])
    outcome = pg_hosts(cluster, alias, "--timeout", "1")
    assert outcome.code == 0, outcome.stderr  # the primary answers
    waited = get_driver().connect_wait(1)  # at least 2 seconds: psycopg 3, libpq < 17
    assert 0.8 * waited <= outcome.elapsed < waited + 0.8
    assert outcome.rows()[hung.port][2:4] == ["no", "timeout expired"]
    with pytest.raises(CommandError, match="--timeout must be a whole number of seconds >= 1"):
        call_command("pg_hosts", "--database", alias, "--timeout", "0", stdout=io.StringIO())


def test_after_failover(cluster: Cluster, make_alias) -> None:
    alias = make_alias()
    old = cluster.primary
    cluster.failover()
    new = cluster.primary
    assert new is not old
    outcome = pg_hosts(cluster, alias, "--json")
    assert outcome.code == 0, outcome.stderr
    report = outcome.json()
    assert report["would_connect"] == address(new)
    hosts = by_port(report)
    assert hosts[old.port]["error"] == "Connection refused"
    assert hosts[new.port]["role"] == "primary"
    assert hosts[new.port]["would_connect"] is True
    (follower,) = [n for n in cluster.standbys if n is not old]
    assert hosts[follower.port]["role"] == "standby"
    assert hosts[follower.port]["replay_lag_bytes"] is not None
    assert pg_hosts(cluster, alias).stdout.splitlines()[-1] == (
        f"would connect to {address(new)} (primary)"
    )


def test_fenced_primary_fails_read_write_but_not_primary(cluster: Cluster, make_alias) -> None:
    read_write = make_alias()
    primary_only = make_alias(OPTIONS={"target_session_attrs": "primary"})
    fenced = cluster.make_read_only(cluster.primary)

    outcome = pg_hosts(cluster, read_write)
    assert outcome.code == 1
    assert outcome.rows()[fenced.port][2:4] == ["yes", "primary (read-only)"]

    outcome = pg_hosts(cluster, primary_only, "--json")
    assert outcome.code == 0, outcome.stderr
    report = outcome.json()
    assert report["would_connect"] == address(fenced)
    assert by_port(report)[fenced.port]["read_only"] is True


# -- what the alias would connect to ------------------------------------------------------


def test_prefer_standby(cluster: Cluster, make_alias) -> None:
    replica = make_alias(OPTIONS={"target_session_attrs": "prefer-standby"})
    standby_only = make_alias(OPTIONS={"target_session_attrs": "standby"})
    first_standby = cluster.standbys[0]  # listed right after the primary

    outcome = pg_hosts(cluster, replica)
    assert outcome.code == 0, outcome.stderr
    assert outcome.rows()[first_standby.port][-1] == "*"
    assert outcome.stdout.splitlines()[-1] == (
        f"would connect to {address(first_standby)} (standby)"
    )

    for standby in cluster.standbys:
        cluster.crash(standby)
    report = pg_hosts(cluster, replica, "--json").json()
    assert report["would_connect"] == address(cluster.primary)
    outcome = pg_hosts(cluster, standby_only)
    assert outcome.code == 1
    assert "no host matches target_session_attrs=standby" in outcome.stderr


def test_any_takes_the_first_reachable_host(cluster: Cluster, make_alias) -> None:
    first, second = cluster.standbys
    alias = make_alias(
        HOST=[address(first), address(second), address(cluster.primary)],
        OPTIONS={"target_session_attrs": "any"},
    )
    assert pg_hosts(cluster, alias, "--json").json()["would_connect"] == address(first)
    cluster.crash(first)
    assert pg_hosts(cluster, alias, "--json").json()["would_connect"] == address(second)


def test_hosts_in_the_order_the_backend_would_try_them(cluster: Cluster, make_alias) -> None:
    order = [*cluster.standbys, cluster.primary]
    alias = make_alias(HOST=[address(n) for n in order])
    listed = [n.port for n in order]
    report = pg_hosts(cluster, alias, "--json").json()
    assert [h["port"] for h in report["hosts"]] == listed
    # A connection learns that the standbys were skipped: they go last now.
    connections[alias].ensure_connection()
    connections[alias].close()
    report = pg_hosts(cluster, alias, "--json").json()
    assert [h["port"] for h in report["hosts"]] == [cluster.primary.port, *listed[:2]]
    assert report["hosts"][0]["would_connect"] is True


# -- settings --------------------------------------------------------------------------------


def test_backend_only_options_do_not_reach_libpq(cluster: Cluster, make_alias) -> None:
    alias = make_alias(
        OPTIONS={
            "isolation_level": 3,  # serializable: a Django option, not libpq's
            "load_balance_hosts": "random",
            "failover": {"host_recheck": 30.0},
            "application_name": "pg-hosts-test",
        }
    )
    report = pg_hosts(cluster, alias, "--json").json()
    assert all(host["reachable"] for host in report["hosts"]), report
    assert report["would_connect"] == address(cluster.primary)


def test_wrong_password(cluster: Cluster, make_alias) -> None:
    wrong = "Not-The-Password-42"
    alias = make_alias(PASSWORD=wrong)
    outcome = pg_hosts(cluster, alias, "--json")
    assert outcome.code == 1
    assert wrong not in outcome.stdout + outcome.stderr
    assert {host["error"] for host in outcome.json()["hosts"]} == {
        'password authentication failed for user "app"'
    }


def test_refuses_other_engines_and_unknown_aliases(cluster: Cluster, make_alias) -> None:
    stock = make_alias(stock=True)
    with pytest.raises(CommandError, match="pg_hosts needs ENGINE 'django_pg_failover'"):
        call_command("pg_hosts", "--database", stock, stdout=io.StringIO())
    with pytest.raises(CommandError, match="'nowhere' is not in DATABASES"):
        call_command("pg_hosts", "--database", "nowhere", stdout=io.StringIO())


# -- the real command line -------------------------------------------------------------------


def manage_py(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/"),
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "DATABASE_URL": cluster.database_url([address(n) for n in cluster.nodes]),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "pg_hosts", *args],
        cwd=TESTPROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cluster.password not in result.stdout + result.stderr
    return result


def test_exit_status_of_manage_py(cluster: Cluster) -> None:
    result = manage_py(cluster)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        f"would connect to {address(cluster.primary)} (primary)"
    )

    cluster.crash(cluster.primary)
    result = manage_py(cluster)
    assert result.returncode == 1
    assert result.stderr.strip() == "CommandError: no host matches target_session_attrs=read-write"
    result = manage_py(cluster, "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["would_connect"] is None


# -- the pure parts, without a server ------------------------------------------------------


def test_lsn_and_version_parsing() -> None:
    assert parse_lsn("0/0") == 0
    assert parse_lsn("16/B374D848") == 0x16B374D848
    assert parse_lsn("1/0") - parse_lsn("0/FFFFFFFF") == 1
    assert format_server_version(150018) == "15.18"
    assert format_server_version(180000) == "18.0"
    assert format_server_version(90624) == "9.6.24"


def test_failure_reason_keeps_libpq_reason_only() -> None:
    message = (
        'connection to server at "127.0.0.1", port 5433 failed: Connection refused\n'
        "\tIs the server running on that host and accepting TCP/IP connections?\n"
    )
    driver = get_driver()
    failure_reason = driver.connect_failure_reason
    assert failure_reason(driver.module.OperationalError(message)) == "Connection refused"
    assert failure_reason(driver.module.OperationalError('\ninvalid dsn: missing "="\n')) == (
        'invalid dsn: missing "="'
    )
