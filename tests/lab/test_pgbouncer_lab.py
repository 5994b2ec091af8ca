"""The lab's PgBouncers: one per node, in front of that node, gone without a trace."""

from __future__ import annotations

from contextlib import closing

import pytest

from django_pg_failover.lab import Cluster, LabError
from django_pg_failover.lab.common import APP_DATABASE, APP_USER
from django_pg_failover.lab.pgbouncer import PGBOUNCER_ENV, Bouncers, find_pgbouncer
from django_pg_failover.lab.sql import driver
from django_pg_failover.lab.system import cmdline, process_state

pytestmark = pytest.mark.timeout(120)


def server_port_through(bouncers: Bouncers, port: int) -> tuple[int, bool]:
    """The port of the server a PgBouncer reaches, and whether it is in recovery."""
    sql = driver()
    with (
        closing(
            sql.connect(
                host="127.0.0.1",
                port=port,
                user=APP_USER,
                password=bouncers.lab.password,
                dbname=APP_DATABASE,
                connect_timeout=5,
            )
        ) as conn,
        closing(conn.cursor()) as cur,
    ):
        cur.execute("SELECT inet_server_port(), pg_is_in_recovery()")
        port, in_recovery = cur.fetchone()
        return port, in_recovery


def test_a_pgbouncer_in_front_of_each_node_leaves_nothing_behind(pg_cluster: Cluster) -> None:
    bouncers = Bouncers.start(pg_cluster)
    pids = [b.pid for b in bouncers.bouncers]
    try:
        reached = [server_port_through(bouncers, b.port) for b in bouncers.bouncers]
        assert reached == [(pg_cluster.nodes[0].port, False)] + [
            (n.port, True) for n in pg_cluster.nodes[1:]
        ]
        for pid, bouncer in zip(pids, bouncers.bouncers, strict=True):
            # Its command line names its configuration inside the lab's folder.
            assert str(bouncer.config_path) in cmdline(pid)
            assert str(pg_cluster.root) in str(bouncer.config_path)
        hosts = bouncers.django_database()["HOST"]
        assert hosts == [f"127.0.0.1:{b.port}" for b in bouncers.bouncers]
        stock = bouncers.django_database(stock=True)
        assert stock["PORT"] == ",".join(str(b.port) for b in bouncers.bouncers)
    finally:
        bouncers.close()
    assert all(process_state(pid) is None for pid in pids)
    assert not bouncers.folder.exists()


def test_no_pgbouncer_is_one_clear_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(PGBOUNCER_ENV, str(tmp_path / "missing"))
    with pytest.raises(LabError, match=PGBOUNCER_ENV):
        find_pgbouncer()
    monkeypatch.delenv(PGBOUNCER_ENV)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("shutil.which", lambda *args, **kwargs: None)
    with pytest.raises(LabError, match="apt-get install pgbouncer"):
        find_pgbouncer()
