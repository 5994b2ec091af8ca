"""The lab's Patroni mode against real agents: processes, reset, command line, cleanup."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from django_pg_failover.lab import LabError, PatroniCluster
from django_pg_failover.lab.etcd import find_etcd
from django_pg_failover.lab.haproxy import find_haproxy
from django_pg_failover.lab.patroni_runtime import can_run_patroni, patroni_python
from django_pg_failover.lab.system import ServerUser, cmdline, process_state, wait_for

pytestmark = pytest.mark.timeout(180)


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def owner_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}").st_uid


def lab_processes(root: Path) -> list[int]:
    """Live processes whose command line names something in ``root``."""
    pids = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    return [
        pid
        for pid in pids
        if process_state(pid) not in (None, "Z") and any(str(root) in a for a in cmdline(pid))
    ]


def test_one_leader_every_replica_streaming_and_the_servers_agree(
    patroni_cluster: PatroniCluster,
) -> None:
    view = {m.name: m for m in patroni_cluster.view()}
    assert set(view) == {"n0", "n1", "n2"}
    leader = patroni_cluster.leader()
    assert view[leader.name].role == "leader"
    for member in patroni_cluster.members:
        if member is leader:
            continue
        assert view[member.name].state == "streaming"
        assert view[member.name].timeline == view[leader.name].timeline
        assert member.pg.is_in_recovery()
    assert not leader.pg.is_in_recovery()


def test_agents_and_servers_run_as_the_server_user_under_the_labs_supervisors(
    patroni_cluster: PatroniCluster,
) -> None:
    user = ServerUser.resolve()
    for member in patroni_cluster.members:
        supervisor, agent, postmaster = member.supervisor_pid, member.agent_pid, member.pg.pid
        assert parent_of(supervisor) == os.getpid()  # dies with this process
        assert parent_of(agent) == supervisor
        # Patroni detaches PostgreSQL; the supervisor adopts and reaps it.
        assert parent_of(postmaster) == supervisor
        assert owner_of(agent) == owner_of(postmaster) == user.uid
    assert patroni_cluster.etcd.url.startswith("http://127.0.0.1:")


def test_haproxy_routes_to_the_leader_as_the_server_user_and_stops_with_the_lab(
    patroni_cluster: PatroniCluster,
) -> None:
    proxy = patroni_cluster.start_haproxy()
    try:
        assert patroni_cluster.start_haproxy() is proxy  # started once
        leader = patroni_cluster.leader()
        assert proxy.routes_to() == {leader.name}
        assert set(proxy.view()) == {m.name for m in patroni_cluster.members}
        assert parent_of(proxy.pid) == os.getpid()  # dies with this process
        assert owner_of(proxy.pid) == ServerUser.resolve().uid
        # Its configuration lives in the lab's folder, named on its command line
        # (CI's leftover check looks for the folder there).
        assert proxy.config_path.parent.parent == patroni_cluster.root
        assert str(proxy.config_path) in cmdline(proxy.pid)
        config = proxy.config_path.read_text()
        for line in (
            "option httpchk GET /primary",
            "http-check expect status 200",
            "default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions",
            f"check port {leader.api_port}",
        ):
            assert line in config
        with closing(leader.pg.connect(port=proxy.port)) as conn, closing(conn.cursor()) as cur:
            cur.execute("SELECT inet_server_port()")
            assert cur.fetchone()[0] == leader.port
        assert patroni_cluster.proxy_database()["HOST"] == [proxy.host]
        pid = proxy.pid
    finally:
        patroni_cluster.stop_haproxy()
    assert process_state(pid) in (None, "Z")
    assert patroni_cluster.haproxy is None


def test_missing_haproxy_is_one_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PG_FAILOVER_HAPROXY", str(tmp_path / "no-haproxy"))
    with pytest.raises(LabError, match=r"PG_FAILOVER_HAPROXY=.* is not an executable file"):
        find_haproxy()
    monkeypatch.delenv("PG_FAILOVER_HAPROXY")
    monkeypatch.setattr("shutil.which", lambda *args, **kwargs: None)
    with pytest.raises(LabError, match=r"(?s)No haproxy program found.*apt-get install haproxy"):
        find_haproxy()


def test_reset_heals_without_a_rebuild(patroni_cluster: PatroniCluster) -> None:
    leader = patroni_cluster.leader()
    dead, frozen = patroni_cluster.replicas
    old_supervisor = dead.supervisor_pid
    patroni_cluster.kill_node(dead)
    patroni_cluster.freeze(frozen)
    patroni_cluster.kill_postmaster(leader)
    assert patroni_cluster.dirty
    assert dead.agent_state == "down"
    assert frozen.agent_state == "frozen"

    started = time.monotonic()
    assert patroni_cluster.reset() is leader  # no failover: the leader kept its lock
    print(f"\nreset after three faults: {time.monotonic() - started:.2f}s")
    assert not patroni_cluster.dirty
    assert dead.supervisor_pid not in (None, old_supervisor)
    assert frozen.agent_state == "up"
    assert {m.state for m in patroni_cluster.view() if m.name != leader.name} == {"streaming"}


def test_synchronous_mode_on_request(patroni_cluster: PatroniCluster) -> None:
    patroni_cluster.set_synchronous(True)
    roles = sorted(m.role for m in patroni_cluster.view())
    assert roles == ["leader", "replica", "sync_standby"]
    sync_states = patroni_cluster.leader().pg.query(
        "SELECT sync_state FROM pg_stat_replication ORDER BY sync_state"
    )
    assert [row[0] for row in sync_states] == ["async", "sync"]
    patroni_cluster.reset()
    assert "sync_standby" not in {m.role for m in patroni_cluster.view()}


# -- command line, missing pieces, cleanup --------------------------------------------


def run_lab(*args: str, lab_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "django_pg_failover.lab", "--dir", str(lab_dir), *args],
        capture_output=True,
        text=True,
        timeout=150,
    )


def test_command_line_start_patroni_status_switchover_stop(pg_patroni: PatroniCluster) -> None:
    lab_dir = pg_patroni.root.parent / f"{pg_patroni.root.name}-cli"
    pids: list[int] = []
    started = run_lab("start", "--patroni", "--standbys", "1", "--haproxy", lab_dir=lab_dir)
    try:
        assert started.returncode == 0, started.stderr
        assert "Patroni agents: n0 http://127.0.0.1:" in started.stdout
        assert "HAProxy: 127.0.0.1:" in started.stdout
        assert '"ENGINE": "django_pg_failover"' in started.stdout
        assert (lab_dir / "password").read_text() not in started.stdout
        state = json.loads((lab_dir / "lab.json").read_text())
        pids += [state["etcd"]["pid"], *(m["supervisor_pid"] for m in state["members"])]
        pids.append(state["haproxy"]["pid"])

        status = run_lab("status", "--json", lab_dir=lab_dir)
        assert status.returncode == 0, status.stderr
        rows = {row["name"]: row for row in json.loads(status.stdout)}
        assert (rows["n0"]["role"], rows["n0"]["server"]) == ("leader", "primary")
        assert (rows["n1"]["state"], rows["n1"]["server"]) == ("streaming", "standby")

        switched = run_lab("failover", "--fault", "stop", lab_dir=lab_dir)
        assert switched.returncode == 0, switched.stderr
        assert "switchover n0 -> n1" in switched.stdout
        assert "HAProxy 127.0.0.1:" in switched.stdout  # its routes, in the status
        assert PatroniCluster.load(lab_dir).leader().name == "n1"
    finally:
        stopped = run_lab("stop", lab_dir=lab_dir)
    assert stopped.returncode == 0, stopped.stderr
    assert not lab_dir.exists()
    assert [pid for pid in pids if process_state(pid) not in (None, "Z")] == []


def test_killed_lab_process_leaves_nothing_running(pg_patroni: PatroniCluster) -> None:
    """SIGKILL of the process that built the lab: etcd, agents and servers die with it."""
    root = pg_patroni.root.parent / f"{pg_patroni.root.name}-orphan"
    code = (
        "import sys\n"
        "from django_pg_failover.lab import PatroniCluster, find_install\n"
        f"lab = PatroniCluster.create(members=2, root={str(root)!r}, "
        f"install=find_install({pg_patroni.members[0].pg.install.major}))\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    builder = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert builder.stdout.readline().strip() == "ready", builder.stderr.read()
        assert len(lab_processes(root)) >= 4  # etcd, supervisors, agents, servers
        builder.send_signal(signal.SIGKILL)
        builder.wait(10)
        wait_for(lambda: not lab_processes(root), 15, "the lab's processes to die", 0.1)
    finally:
        builder.kill()
        builder.wait()
        shutil.rmtree(root, ignore_errors=True)


def test_missing_etcd_is_one_clear_error_before_anything_starts(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PG_FAILOVER_ETCD", str(tmp_path / "no-etcd"))
    with pytest.raises(LabError, match=r"PG_FAILOVER_ETCD=.* is not an executable file"):
        find_etcd()
    monkeypatch.delenv("PG_FAILOVER_ETCD")
    monkeypatch.setattr("django_pg_failover.lab.etcd._distro_binary", lambda: None)
    monkeypatch.setattr("django_pg_failover.lab.etcd._system_binary", lambda: None)
    root = tmp_path / "lab"
    with pytest.raises(LabError, match=r"(?s)No etcd binary found.*apt-get install etcd-server"):
        PatroniCluster.create(root=root)
    assert not root.exists()


def test_patroni_runs_as_the_server_user(monkeypatch) -> None:
    user = ServerUser.resolve()
    python = patroni_python(user)
    assert can_run_patroni(user, python)
    monkeypatch.setenv("PG_FAILOVER_PATRONI_PYTHON", "/bin/false")
    with pytest.raises(LabError, match="cannot run Patroni with it"):
        patroni_python(user)
