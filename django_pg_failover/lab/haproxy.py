"""HAProxy in front of a Patroni lab, steered by each member's REST ``/primary``.

The setup Patroni's documentation shows: one TCP address for the
application, a health check per member on its agent's ``GET /primary`` (200
on the leader only), and ``on-marked-down shutdown-sessions`` so that a
session proxied to a member that stops being the leader is cut when the check
marks it down. Patroni's answer can lag behind the server (``/primary``
stayed 200 for about 2 s after a switched-over leader stopped taking writes,
here): whoever connects through the proxy must still judge the server itself.

The lab starts one HAProxy on a free loopback port, as the server user (it
needs no privilege), with its configuration, stats socket and log in a folder
of the lab's own: it is stopped with the lab, and a process left behind names
the lab's folder on its command line.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from .common import LOOPBACK, free_port, write_private
from .errors import LabError, LabTimeout
from .system import ServerUser, cmdline, log_tail, process_state, reap, spawn, wait_for

HAPROXY_ENV = "PG_FAILOVER_HAPROXY"
PROXY_NAME = "postgres"

HOW_TO_GET_HAPROXY = (
    "No haproxy program found (the Patroni lab's proxy tests run HAProxy). Either:\n"
    "  - install your system's HAProxy (Debian: apt-get install haproxy; the lab "
    "starts its own, the system service need not run; `make venv` does this when "
    "run as root), or\n"
    f"  - set {HAPROXY_ENV} to the haproxy program."
)

# Checked every 500 ms; down after 2 failed checks, up after 1 good one.
CHECK = "inter 500ms fall 2 rise 1"


@dataclass(frozen=True)
class ProxiedServer:
    """One member behind the proxy: its PostgreSQL port and its agent's REST port."""

    name: str
    port: int
    api_port: int


def find_haproxy() -> Path:
    """The haproxy program: ``$PG_FAILOVER_HAPROXY``, or the system's (``/usr/sbin``)."""
    explicit = os.environ.get(HAPROXY_ENV)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise LabError(f"{HAPROXY_ENV}={explicit!r} is not an executable file")
        return Path(explicit)
    # Debian installs it in /usr/sbin, outside an ordinary user's PATH.
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise LabError(HOW_TO_GET_HAPROXY)
    return Path(found)


def haproxy_version(binary: Path) -> str:
    try:
        out = subprocess.run([str(binary), "-v"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise LabError(f"{binary} does not run: {exc}") from None
    words = out.split()
    return words[2] if len(words) > 2 else "unknown"


def config_text(port: int, servers: Sequence[ProxiedServer], stats_socket: Path) -> str:
    """HAProxy's configuration: TCP to the member whose ``/primary`` answers 200."""
    lines = [
        "global",
        "    maxconn 1000",
        f"    stats socket {stats_socket} mode 600 level user",
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 2s",
        # Idle persistent connections (CONN_MAX_AGE) stay open through the proxy.
        "    timeout client 1h",
        "    timeout server 1h",
        "    timeout check 1s",
        "",
        f"listen {PROXY_NAME}",
        f"    bind {LOOPBACK}:{port}",
        "    option httpchk GET /primary",
        "    http-check expect status 200",
        # A session to a member marked down is cut: it is no longer the leader.
        f"    default-server {CHECK} on-marked-down shutdown-sessions",
        *(f"    server {s.name} {LOOPBACK}:{s.port} check port {s.api_port}" for s in servers),
        "",
    ]
    return "\n".join(lines)


class HAProxy:
    """One HAProxy process of a lab, on a free loopback port."""

    def __init__(
        self,
        binary: Path,
        folder: Path,
        port: int,
        servers: Sequence[ProxiedServer],
        pid: int | None = None,
    ) -> None:
        self.binary = binary
        self.folder = folder
        self.port = port
        self.servers = list(servers)
        self._proc: subprocess.Popen | None = None
        self._pid = pid

    def __repr__(self) -> str:
        return f"<HAProxy {LOOPBACK}:{self.port}>"

    @property
    def host(self) -> str:
        """The proxy's address, as a ``HOST`` entry."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.folder / "haproxy.cfg"

    @property
    def stats_socket(self) -> Path:
        return self.folder / "stats.sock"

    @property
    def log_path(self) -> Path:
        return self.folder / "haproxy.log"

    @classmethod
    def start(
        cls,
        root: Path,
        servers: Sequence[ProxiedServer],
        user: ServerUser,
        detach: bool = False,
        timeout: float = 30,
    ) -> HAProxy:
        """Write the configuration into ``root/haproxy`` and start HAProxy as ``user``."""
        binary = find_haproxy()
        folder = root / "haproxy"
        folder.mkdir(exist_ok=True)
        user.chown(folder)
        proxy = cls(binary, folder, free_port(), servers)
        write_private(proxy.config_path, config_text(proxy.port, servers, proxy.stats_socket))
        user.chown(proxy.config_path)
        # -db: in the foreground, one process (no master, no fork): its pid is HAProxy.
        args = [str(binary), "-db", "-f", str(proxy.config_path)]
        proxy._proc = spawn(user, args, proxy.log_path, detach=detach)
        proxy._pid = proxy._proc.pid
        try:
            wait_for(proxy._ready, timeout, "HAProxy to listen", interval=0.02)
        except LabError:
            proxy.stop()
            raise
        return proxy

    @property
    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        pid = self._pid
        # A lab attached from its state file: make sure the pid is still our HAProxy.
        if pid is None or process_state(pid) in (None, "Z"):
            return None
        return pid if str(self.config_path) in cmdline(pid) else None

    def _ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise LabError(
                f"HAProxy exited with status {self._proc.returncode}:\n{self.log_tail()}"
            )
        try:
            self.view()
            with closing(socket.create_connection((LOOPBACK, self.port), timeout=1)):
                return True
        except OSError:
            return False

    def _ask(self, command: str) -> str:
        with closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as sock:
            sock.settimeout(2)
            sock.connect(str(self.stats_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def view(self) -> dict[str, str]:
        """Each member's state as HAProxy's checks see it: ``UP``, ``UP 1/2`` (going
        down: still routed to), ``DOWN``... Raises OSError when HAProxy does not answer."""
        text = self._ask("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row.get("pxname") == PROXY_NAME and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def routes_to(self) -> set[str]:
        """The members HAProxy sends new connections to now."""
        try:
            view = self.view()
        except OSError:
            return set()
        return {name for name, status in view.items() if status.startswith("UP")}

    def wait_routes_to(self, names: set[str], timeout: float = 30) -> None:
        """Wait until HAProxy sends new connections to ``names`` and to no other member."""
        try:
            wait_for(lambda: self.routes_to() == names, timeout, f"HAProxy to route to {names}")
        except LabTimeout:
            raise LabTimeout(
                f"HAProxy routes to {sorted(self.routes_to())}, not {sorted(names)}:\n"
                f"{self.log_tail()}"
            ) from None

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)

    def stop(self) -> None:
        """Kill HAProxy (its connections end with it)."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            if self._proc is not None:
                self._proc.wait()
            else:
                reap([pid])
        self._proc = None
        self._pid = None

    def state(self) -> dict:
        """What a lab's state file keeps of it (:meth:`from_state` reads it back)."""
        return {
            "binary": str(self.binary),
            "port": self.port,
            "pid": self.pid,
            "servers": [[s.name, s.port, s.api_port] for s in self.servers],
        }

    @classmethod
    def from_state(cls, root: Path, state: dict) -> HAProxy:
        servers = [ProxiedServer(*s) for s in state["servers"]]
        return cls(Path(state["binary"]), root / "haproxy", state["port"], servers, state["pid"])
