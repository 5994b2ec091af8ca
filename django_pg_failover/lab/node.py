"""One PostgreSQL server of the lab, and the real faults it can suffer."""

from __future__ import annotations

import enum
import os
import signal
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

from .binaries import PgInstall
from .common import LOOPBACK, SUPERUSER
from .errors import LabError
from .sql import driver
from .system import (
    ServerUser,
    children_of,
    kill_tree,
    log_tail,
    process_state,
    reap,
    remove_shared_memory,
    signal_all,
    spawn,
    wait_for,
)

__all__ = ["LOOPBACK", "SUPERUSER", "Node", "State"]


class State(enum.Enum):
    DOWN = "down"
    UP = "up"
    HUNG = "hung"


class Node:
    """A PostgreSQL server on loopback, with its data folder and its process.

    Per-node settings go on the command line: ``pg_basebackup`` and
    ``pg_rewind`` copy the configuration files from one node to the other.
    """

    def __init__(
        self,
        name: str,
        port: int,
        datadir: Path,
        install: PgInstall,
        user: ServerUser,
        socket_dir: Path,
        listen_addresses: str = LOOPBACK,
        detach: bool = False,
    ) -> None:
        self.name = name
        self.port = port
        self.datadir = Path(datadir)
        self.install = install
        self.user = user
        self.socket_dir = socket_dir
        self.listen_addresses = listen_addresses
        self.detach = detach
        #: Added to the server's (clean) environment at its next start, e.g. LOCPATH.
        self.environment: dict[str, str] = {}
        self._proc: subprocess.Popen | None = None

    def __repr__(self) -> str:
        return f"<Node {self.name} port={self.port} {self.state.value}>"

    @property
    def log_path(self) -> Path:
        return self.datadir.parent / f"{self.name}.log"

    # -- process ------------------------------------------------------------------

    def _pidfile(self) -> list[str]:
        try:
            return (self.datadir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, NotADirectoryError):
            return []

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it exists (running, hung or not yet reaped)."""
        if self._proc is not None:
            if self._proc.poll() is None:
                return self._proc.pid
            # Ours has exited: another process (one that loaded the lab) may have
            # started the node since.
            self._proc = None
        lines = self._pidfile()
        if not lines or not lines[0].strip().isdigit():
            return None
        pid = int(lines[0])
        state = process_state(pid)
        return pid if state not in (None, "Z") else None

    @property
    def state(self) -> State:
        pid = self.pid
        if pid is None:
            return State.DOWN
        return State.HUNG if process_state(pid) == "T" else State.UP

    def shared_memory_id(self) -> int | None:
        """The System V segment of the running postmaster (read it before a kill)."""
        lines = self._pidfile()
        if len(lines) >= 7 and len(lines[6].split()) == 2:
            return int(lines[6].split()[1])
        return None

    def start(self, wait: bool = True, timeout: float = 60) -> None:
        if self.state is not State.DOWN:
            raise LabError(f"{self.name} is already running")
        args = [
            self.install.program("postgres"),
            "-D",
            str(self.datadir),
            "-c",
            f"port={self.port}",
            "-c",
            f"cluster_name={self.name}",
            "-c",
            f"listen_addresses={self.listen_addresses}",
            "-c",
            f"unix_socket_directories={self.socket_dir}",
        ]
        self._proc = spawn(
            self.user, args, self.log_path, detach=self.detach, environment=self.environment
        )
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(self._accepts_connections, timeout, f"{self.name} to accept connections")

    def _accepts_connections(self) -> bool:
        sql = driver()
        if self._proc is not None and self._proc.poll() is not None:
            raise LabError(
                f"{self.name} exited with status {self._proc.returncode}:\n" + self.log_tail()
            )
        try:
            sql.connect(**self.dsn(connect_timeout=2)).close()
        except sql.OperationalError:
            return False
        return True

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)

    def _wait_exit(self, timeout: float) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired as exc:
                raise LabError(f"{self.name} did not stop within {timeout}s") from exc
            self._proc = None
        else:
            wait_for(lambda: self.pid is None, timeout, f"{self.name} to stop")

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """Shut down the way ``pg_ctl stop -m smart|fast|immediate`` does."""
        signum = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        pid = self.pid
        if pid is None:
            self._proc = None
            return
        if self.state is State.HUNG:
            self.resume()
        os.kill(pid, signum)
        self._wait_exit(timeout)

    # -- faults ---------------------------------------------------------------------

    def crash(self) -> None:
        """``kill -9`` the postmaster and every child, as a power cut would."""
        pid = self.pid
        if pid is None:
            raise LabError(f"{self.name} is not running")
        shmid = self.shared_memory_id()
        victims = kill_tree(pid)
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        reap(victims)
        self.remove_leftovers(shmid)

    def kill_postmaster(self, timeout: float = 10) -> None:
        """``kill -9`` the postmaster alone: every backend notices, sends its client the
        goodbye (FATAL 57P01 ``terminating connection due to unexpected postmaster
        exit``) and exits. Returns once they all have."""
        pid = self.pid
        if pid is None:
            raise LabError(f"{self.name} is not running")
        shmid = self.shared_memory_id()
        children = children_of(pid, zombies=True)
        os.kill(pid, signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        reap([pid, *children], timeout)
        self.remove_leftovers(shmid)

    def remove_leftovers(self, shmid: int | None) -> None:
        """Clean up after a killed postmaster: its shared memory and lock files."""
        if shmid is not None:
            remove_shared_memory(shmid)
        # A killed postmaster that is not our child stays a zombie until init
        # reaps it, and its lock files would make a restart refuse to run.
        for lock in (
            self.datadir / "postmaster.pid",
            self.socket_dir / f".s.PGSQL.{self.port}.lock",
            self.socket_dir / f".s.PGSQL.{self.port}",
        ):
            lock.unlink(missing_ok=True)

    def hang(self, include_sessions: bool = True) -> None:
        """SIGSTOP the node: the kernel still accepts TCP connections, nobody answers.

        With ``include_sessions`` every backend process freezes too (a server
        that stopped answering; unlike a frozen VM, its kernel still completes
        TCP handshakes and acknowledges data); without, only new connections
        hang and open sessions keep working.
        """
        pid = self.pid
        if pid is None:
            raise LabError(f"{self.name} is not running")
        os.kill(pid, signal.SIGSTOP)
        if include_sessions:
            signal_all(children_of(pid), signal.SIGSTOP)
        # A signal is delivered asynchronously: return once the node is frozen.
        wait_for(lambda: process_state(pid) == "T", 10, f"{self.name} to stop", interval=0.001)

    def resume(self) -> None:
        pid = self.pid
        if pid is None:
            return
        signal_all(children_of(pid), signal.SIGCONT)
        os.kill(pid, signal.SIGCONT)

    # -- SQL ------------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres", **extra: Any) -> dict[str, Any]:
        params = {
            "host": LOOPBACK,
            "port": self.port,
            "user": SUPERUSER,
            "dbname": dbname,
            "connect_timeout": 5,
            "application_name": "pg-failover-lab",
        }
        params.update(extra)
        return params

    def connect(self, dbname: str = "postgres", autocommit: bool = True, **extra: Any):
        """A superuser connection straight to this node (psycopg2 or psycopg 3)."""
        conn = driver().connect(**self.dsn(dbname, **extra))
        conn.autocommit = autocommit
        return conn

    def query(self, sql: str, params: Any = None, dbname: str = "postgres") -> list[tuple]:
        with closing(self.connect(dbname)) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def scalar(self, sql: str, params: Any = None, dbname: str = "postgres") -> Any:
        rows = self.query(sql, params, dbname)
        return rows[0][0] if rows else None

    def is_in_recovery(self) -> bool:
        return bool(self.scalar("SELECT pg_is_in_recovery()"))

    def promote(self, timeout: float = 60) -> None:
        if not self.scalar("SELECT pg_promote(true, %s)", [int(timeout)]):
            raise LabError(f"{self.name} did not finish promotion within {timeout}s")

    def wal_position(self) -> int:
        """Bytes of WAL inserted (primary) or received (standby) so far.

        The insert position, not the write position: a commit may sit in the WAL
        buffers a moment, and waiting for replay must include it.
        """
        return int(
            self.scalar(
                "SELECT pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() "
                "THEN greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) "
                "ELSE pg_current_wal_insert_lsn() END, '0/0')"
            )
        )

    def replay_position(self) -> int:
        return int(
            self.scalar(
                "SELECT pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() "
                "THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, '0/0')"
            )
        )

    def timeline(self) -> int:
        """The timeline a standby streams, or the primary's own."""
        return int(
            self.scalar(
                "SELECT CASE WHEN pg_is_in_recovery() THEN COALESCE("
                "(SELECT received_tli FROM pg_stat_wal_receiver), "
                "(SELECT timeline_id FROM pg_control_checkpoint())) "
                "ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))"
                "::bit(32)::int END"
            )
        )

    def set_primary(self, primary: Node) -> None:
        """Point this standby's WAL receiver at ``primary`` (no restart needed)."""
        with closing(self.connect()) as conn, conn.cursor() as cur:
            cur.execute("ALTER SYSTEM SET primary_conninfo = %s", [primary.conninfo(self)])
            cur.execute("SELECT pg_reload_conf()")

    def conninfo(self, for_standby: Node) -> str:
        return (
            f"host={LOOPBACK} port={self.port} user={SUPERUSER} application_name={for_standby.name}"
        )
