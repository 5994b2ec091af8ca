"""A PgBouncer in front of each server of a lab: the pooler deployments put on every node.

Each :class:`Bouncer` is a real PgBouncer (session pooling) on a free loopback
port that forwards every database to one node. It runs as the lab's server
user (PgBouncer refuses root), from a configuration file inside the lab's
folder: the command line names that folder, so a run that checks what its
labs left behind finds a PgBouncer that outlived its lab. Stopping removes
its folder.

Rules of its configuration, and why:

- ``auth_type = trust`` with an ``auth_file`` listing the lab's users: the
  clients are the tests on loopback; PgBouncer logs in to the server with the
  password the file holds (SCRAM, as the lab's servers ask).
- ``unix_socket_dir =`` (empty): no socket in a folder other programs share.
- ``server_login_retry`` of 1 s (PgBouncer's default is 15 s): after a failed
  login to a server that is down, PgBouncer turns clients away ("cannot
  connect to server") until it tries again; a restarted node is used again
  within a second, as the lab's faults are timed in seconds.

What deployments see, kept here on purpose: PgBouncer builds the start-up
message it replays to every new client (``ParameterStatus``: ``in_hot_standby``,
``default_transaction_read_only``...) from its first server connection, and
keeps it when the server behind it changes role.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

from .common import APP_USER, LOOPBACK, SUPERUSER, Lab, free_port, write_private
from .errors import LabError
from .system import ServerUser, log_tail, spawn, wait_for

PGBOUNCER_ENV = "PG_FAILOVER_PGBOUNCER"

HOW_TO_GET_PGBOUNCER = (
    "No pgbouncer program found (the pooler tests put a PgBouncer in front of each lab "
    "server). Either:\n"
    "  - install your system's PgBouncer (Debian: apt-get install pgbouncer; `make test` "
    "does it when run as root; the lab starts its own, the system service need not run), or\n"
    f"  - set {PGBOUNCER_ENV} to the pgbouncer program."
)


def find_pgbouncer() -> Path:
    """The pgbouncer program: ``$PG_FAILOVER_PGBOUNCER``, else the system's."""
    explicit = os.environ.get(PGBOUNCER_ENV)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise LabError(f"{PGBOUNCER_ENV}={explicit!r} is not an executable file")
        return Path(explicit)
    # Debian installs it in /usr/sbin, which a non-root user's PATH often lacks.
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise LabError(HOW_TO_GET_PGBOUNCER)
    return Path(found)


def _quoted(text: str) -> str:
    """A value as PgBouncer's auth_file writes it (double quotes doubled)."""
    return '"' + text.replace('"', '""') + '"'


class Bouncer:
    """One PgBouncer, session pooling, in front of the node on ``target_port``."""

    def __init__(self, name: str, target_port: int, folder: Path, binary: Path) -> None:
        self.name = name
        self.target_port = target_port
        self.folder = folder
        self.binary = binary
        self.port = free_port()
        self._proc: subprocess.Popen | None = None

    def __repr__(self) -> str:
        return f"<Bouncer {self.name} port={self.port} -> {self.target_port}>"

    @property
    def config_path(self) -> Path:
        return self.folder / f"{self.name}.ini"

    @property
    def log_path(self) -> Path:
        return self.folder / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    def write_config(self, user: ServerUser, password: str) -> None:
        users = self.folder / f"{self.name}.users"
        lines = [f"{_quoted(APP_USER)} {_quoted(password)}", f'{_quoted(SUPERUSER)} ""']
        write_private(users, "\n".join(lines) + "\n")
        user.chown(users)
        config = "\n".join(
            [
                "; django-pg-failover lab: one PgBouncer in front of one server (tests only)",
                "[databases]",
                f"* = host={LOOPBACK} port={self.target_port}",
                "[pgbouncer]",
                f"listen_addr = {LOOPBACK}",
                f"listen_port = {self.port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {users}",
                "pool_mode = session",
                "max_client_conn = 500",
                "default_pool_size = 100",
                "server_login_retry = 1",
                "server_connect_timeout = 3",
                "query_wait_timeout = 5",
                "ignore_startup_parameters = extra_float_digits",
                "",
            ]
        )
        write_private(self.config_path, config)
        user.chown(self.config_path)

    def start(self, user: ServerUser, detach: bool = False, timeout: float = 30) -> None:
        if self.pid is not None:
            raise LabError(f"{self} is already running")
        self._proc = spawn(user, [str(self.binary), str(self.config_path)], self.log_path, detach)
        try:
            wait_for(self._listening, timeout, f"PgBouncer {self.name} to listen on {self.port}")
        except BaseException:
            self.stop()
            raise

    def _listening(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise LabError(
                f"PgBouncer {self.name} exited with status {self._proc.returncode}:\n"
                + log_tail(self.log_path)
            )
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            sock.settimeout(1)
            try:
                sock.connect((LOOPBACK, self.port))
            except OSError:
                return False
        return True

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (PgBouncer's immediate shutdown), SIGKILL if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Bouncers:
    """A PgBouncer in front of every node of ``lab``, started and stopped together.

    :meth:`django_database` hands out ``DATABASES`` entries whose HOST lists the
    PgBouncers (in the nodes' order) instead of the servers.
    """

    def __init__(self, lab: Lab, folder: Path, bouncers: list[Bouncer]) -> None:
        self.lab = lab
        self.folder = folder
        self.bouncers = bouncers

    @classmethod
    def start(cls, lab: Lab, detach: bool = False) -> Bouncers:
        binary = find_pgbouncer()
        user = ServerUser.resolve()
        # Inside the lab's folder: the PgBouncers' command lines name it.
        folder = Path(lab.root) / f"pgbouncer-{secrets.token_hex(4)}"
        folder.mkdir()
        user.chown(folder)
        bouncers = cls(lab, folder, [Bouncer(n.name, n.port, folder, binary) for n in lab.nodes])
        _running.add(bouncers)
        try:
            for bouncer in bouncers.bouncers:
                bouncer.write_config(user, lab.password)
                bouncer.start(user, detach)
        except BaseException:
            bouncers.close()
            raise
        return bouncers

    def __enter__(self) -> Bouncers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Bouncers {', '.join(repr(b) for b in self.bouncers)}>"

    def of(self, node: Any) -> Bouncer:
        """The PgBouncer in front of ``node``."""
        for bouncer in self.bouncers:
            if bouncer.name == node.name:
                return bouncer
        raise LabError(f"no PgBouncer in front of {node.name!r}")

    def hosts(self) -> list[str]:
        return [f"{LOOPBACK}:{b.port}" for b in self.bouncers]

    def django_database(self, stock: bool = False, **overrides: Any) -> dict[str, Any]:
        """The lab's ``DATABASES`` entry (:meth:`Lab.django_database`) through the PgBouncers."""
        database = self.lab.django_database(stock=stock, **overrides)
        if "HOST" not in overrides:
            if stock:
                database["HOST"] = ",".join(LOOPBACK for _ in self.bouncers)
                database["PORT"] = ",".join(str(b.port) for b in self.bouncers)
            else:
                database["HOST"] = self.hosts()
        return database

    def close(self) -> None:
        """Stop every PgBouncer and remove their folder."""
        _running.discard(self)
        for bouncer in self.bouncers:
            bouncer.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


#: PgBouncers this process started: stopped at exit, whatever the exit path.
_running: set[Bouncers] = set()


@atexit.register
def _stop_all() -> None:
    for bouncers in list(_running):
        with suppress(Exception):
            bouncers.close()
