"""One member of a Patroni lab: its agent, its PostgreSQL, and Patroni's word about it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import LOOPBACK
from .errors import LabError
from .node import Node
from .system import (
    ServerUser,
    children_of,
    cmdline,
    kill_tree,
    process_state,
    reap,
    signal_all,
    spawn,
    stop_tree,
    wait_for,
)

SUPERVISOR = Path(__file__).with_name("supervisor.py")
STREAMING = "streaming"


@dataclass(frozen=True)
class MemberView:
    """One member as Patroni's ``/cluster`` reports it (possibly stale)."""

    name: str
    role: str
    state: str
    timeline: int | None
    lag: int | str | None

    @property
    def is_replica(self) -> bool:
        return self.role in ("replica", "sync_standby", "quorum_standby")


@dataclass(frozen=True)
class MemberStatus:
    """Patroni's view of a member next to its processes' and its server's."""

    name: str
    port: int
    api_port: int
    agent: str
    role: str | None
    state: str | None
    timeline: int | None
    lag: int | str | None
    server: str


class Member:
    """One Patroni node: an agent (under the lab's supervisor) and its PostgreSQL."""

    def __init__(
        self, name: str, port: int, api_port: int, pg: Node, supervisor_pid: int | None = None
    ) -> None:
        self.name = name
        self.port = port
        self.api_port = api_port
        self.pg = pg
        self._proc: subprocess.Popen | None = None
        self._supervisor_pid = supervisor_pid
        self._agent: tuple[int, int] | None = None  # (supervisor pid, agent pid)

    def __repr__(self) -> str:
        return f"<Member {self.name} port={self.port} api={self.api_port} {self.agent_state}>"

    @property
    def config_path(self) -> Path:
        return self.pg.datadir.parent / f"{self.name}.yml"

    @property
    def log_path(self) -> Path:
        return self.pg.log_path

    # -- processes ------------------------------------------------------------------

    @property
    def supervisor_pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        pid = self._supervisor_pid
        if pid is None or process_state(pid) in (None, "Z"):
            return None
        # A lab attached from its state file: make sure the pid is still ours.
        return pid if str(self.config_path) in cmdline(pid) else None

    @property
    def agent_pid(self) -> int | None:
        supervisor = self.supervisor_pid
        if supervisor is None:
            return None
        # A supervisor starts one agent: look it up in /proc once, not at every poll.
        known = self._agent
        if known and known[0] == supervisor and process_state(known[1]) not in (None, "Z"):
            return known[1]
        for pid in children_of(supervisor):
            if "patroni" in cmdline(pid)[1:3]:
                self._agent = (supervisor, pid)
                return pid
        return None

    @property
    def agent_state(self) -> str:
        """``up``, ``frozen`` (SIGSTOP) or ``down``."""
        pid = self.agent_pid
        if pid is None:
            return "down"
        return "frozen" if process_state(pid) == "T" else "up"

    def start_agent(self, python: str, user: ServerUser, detach: bool) -> None:
        if self.supervisor_pid is not None:
            raise LabError(f"{self.name}'s agent is already running")
        # The supervisor kills the node when the lab dies; not for a lab the
        # command line leaves running, nor when a short-lived thread starts it.
        parent = (
            0
            if detach or threading.current_thread() is not threading.main_thread()
            else os.getpid()
        )
        supervisor = self.config_path.parent / SUPERVISOR.name
        args = [python, str(supervisor), str(parent), "--", python, "-m", "patroni"]
        self._proc = spawn(user, [*args, str(self.config_path)], self.log_path, detach=True)
        self._supervisor_pid = self._proc.pid

    def check_not_exited(self) -> bool:
        """Fail at once, with the agent's log, when the agent this lab started exited."""
        if self._proc is not None and self._proc.poll() is not None:
            raise LabError(f"{self.name}'s Patroni exited:\n{self.pg.log_tail()}")
        return True

    def kill(self) -> None:
        """``kill -9`` of the agent and PostgreSQL at the same instant: the machine died."""
        supervisor = self.supervisor_pid
        if supervisor is None:
            raise LabError(f"{self.name} is not running")
        shmid = self.pg.shared_memory_id() if self.pg.pid else None
        victims = kill_tree(supervisor)
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        reap(victims)
        self.pg.remove_leftovers(shmid)

    def kill_postmaster(self) -> int:
        """``kill -9`` of the postmaster alone; its backends notice and exit."""
        pid = self.pg.pid
        if pid is None:
            raise LabError(f"{self.name}'s PostgreSQL is not running")
        os.kill(pid, signal.SIGKILL)
        # Gone once the supervisor reaped it: until then it still looks alive.
        wait_for(lambda: self.pg.pid != pid, 10, f"{self.name}'s postmaster to die", 0.005)
        return pid

    def freeze(self) -> None:
        """SIGSTOP the agent, the postmaster and every session: the node stops answering.

        The kernel still accepts TCP connections for it. The supervisor stays
        awake, so the node still dies with the lab.
        """
        if self.supervisor_pid is None:
            raise LabError(f"{self.name} is not running")
        stop_tree(self.supervisor_pid, include_root=False)

    def thaw(self) -> None:
        supervisor = self.supervisor_pid
        if supervisor is None:
            return
        pending = children_of(supervisor)
        while pending:
            pid = pending.pop()
            signal_all([pid], signal.SIGCONT)
            pending.extend(children_of(pid))

    # -- REST API ---------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"

    def api(
        self, method: str, path: str, body: dict | None = None, timeout: float = 2.0
    ) -> tuple[int, Any]:
        """Call the agent's REST API: (status, JSON or text). Raises OSError when unreachable."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.api_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        text = raw.decode(errors="replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text.strip()

    # -- the server's own answer ------------------------------------------------------

    def is_primary(self, timeout: int = 1) -> bool:
        """True only if the server itself says it is out of recovery (not Patroni)."""
        try:
            with (
                closing(self.pg.connect(connect_timeout=timeout)) as conn,
                closing(conn.cursor()) as cur,
            ):
                cur.execute("SELECT pg_is_in_recovery()")
                return cur.fetchone()[0] is False
        except Exception:  # any driver's error: not reachable, so not a primary now
            return False
