"""What both kinds of lab share: where a lab lives, its ports, files and server settings.

The lab runs in two modes: :class:`~django_pg_failover.lab.Cluster` promotes
and rewinds its servers itself, :class:`~django_pg_failover.lab.PatroniCluster`
leaves that to Patroni. Both hand out the same ``DATABASES`` entries and keep
their state in the same two files, so the command line and Django settings
can attach to either.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import tempfile
from contextlib import closing, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from .errors import LabError
from .system import ServerUser

LOOPBACK = "127.0.0.1"
SUPERUSER = "postgres"
APP_USER = "app"
APP_DATABASE = "app"
STATE_FILE = "lab.json"
PASSWORD_FILE = "password"

# Settings of every lab server (tests only, never production: fsync is off).
SERVER_PARAMETERS: dict[str, str] = {
    "wal_level": "replica",
    "hot_standby": "on",
    "hot_standby_feedback": "on",
    "wal_log_hints": "on",
    "full_page_writes": "on",
    "wal_keep_size": "256MB",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "max_connections": "120",
    "shared_buffers": "16MB",
    "fsync": "off",
    # With the default 5 s a standby once took 5.5 s to notice its new primary.
    "wal_retrieve_retry_interval": "100ms",
    "wal_receiver_timeout": "5s",
    "wal_sender_timeout": "5s",
    # A killed postmaster leaves its dynamic shared memory behind: in the data
    # folder it goes away with the lab, in /dev/shm it would stay in RAM.
    "dynamic_shared_memory_type": "mmap",
    "password_encryption": "scram-sha-256",
    "lc_messages": "C",
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] ",
}


def hba_lines(replication_user: str = "all") -> list[str]:
    """``pg_hba.conf``: the superuser and replication trusted, everyone else by SCRAM."""
    lines = [
        f"local   all          {SUPERUSER}     trust",
        f"local   replication  {replication_user}     trust",
    ]
    for network in ("127.0.0.1/32", "::1/128"):
        lines += [
            f"host    all          {SUPERUSER}     {network}   trust",
            f"host    replication  {replication_user}     {network}   trust",
        ]
    lines.append("local   all          all          scram-sha-256")
    lines += [
        f"host    all          all          {n}   scram-sha-256"
        for n in ("127.0.0.1/32", "::1/128")
    ]
    return lines


# -- places and ports -----------------------------------------------------------------


PARENT_ENV = "PG_FAILOVER_LAB_PARENT"


def default_parent_dir() -> Path:
    """Where labs are built: ``$PG_FAILOVER_LAB_PARENT``, else tmpfs when there is one
    (a lab's data is disposable and RAM is fast), else the temporary folder.

    CI gives each run a parent of its own, and judges leftovers inside it only.
    """
    if os.environ.get(PARENT_ENV):
        parent = Path(os.environ[PARENT_ENV])
        parent.mkdir(parents=True, exist_ok=True)
        return parent
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with suppress(OSError), open("/proc/mounts") as mounts:
            if any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in mounts):
                return shm
    return Path(tempfile.gettempdir())


def default_lab_dir() -> Path:
    """Where ``python -m django_pg_failover.lab start`` keeps its lab."""
    return Path(
        os.environ.get("PG_FAILOVER_LAB_DIR") or default_parent_dir() / "django-pg-failover-lab"
    )


def make_root(root: Path | str | None, user: ServerUser) -> Path:
    """A folder for a new lab (a fresh temporary one by default), owned by ``user``."""
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="pgfo-lab-", dir=default_parent_dir()))
    else:
        root = Path(root)
        if (root / STATE_FILE).exists():
            raise LabError(f"a lab already lives in {root}: stop it first")
        root.mkdir(parents=True, exist_ok=True)
    user.chown(root)
    return root


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    with closing(socket.socket(socket.AF_INET6, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind(("::1", 0))
        except OSError:
            return False
    return True


def listen_addresses() -> str:
    return f"{LOOPBACK},::1" if ipv6_loopback_available() else LOOPBACK


def free_port() -> int:
    """A TCP port free on loopback for both IPv4 and IPv6."""
    for _ in range(100):
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
        if not ipv6_loopback_available():
            return port
        with closing(socket.socket(socket.AF_INET6, socket.SOCK_STREAM)) as sock:
            try:
                sock.bind(("::1", port))
            except OSError:
                continue
        return port
    raise LabError("no free TCP port on loopback")


# -- files ------------------------------------------------------------------------------


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (state, passwords, configuration)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def read_state(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / STATE_FILE).read_text())
    except FileNotFoundError:
        raise LabError(f"no lab in {root} (start one first)") from None


def create_app_database(conn: Any, password: str) -> None:
    """The login role and database Django uses, on a primary (superuser connection)."""
    with closing(conn.cursor()) as cur:
        cur.execute(f"CREATE ROLE {APP_USER} LOGIN CREATEDB PASSWORD %s", [password])
        cur.execute(f"CREATE DATABASE {APP_DATABASE} OWNER {APP_USER}")


# -- what a lab hands out -------------------------------------------------------------


class HasPort(Protocol):
    name: str
    port: int


@dataclass(frozen=True)
class NodeStatus:
    name: str
    port: int
    state: str
    role: str
    timeline: int | None
    wal_position: int | None
    replay_lag_bytes: int | None


def status_as_dicts(rows: list[Any]) -> list[dict[str, Any]]:
    return [asdict(row) for row in rows]


class Lab:
    """The part of a lab that does not depend on who promotes its servers."""

    root: Path
    password: str
    nodes: list[Any]

    def node(self, name: str) -> Any:
        for node in self.nodes:
            if node.name == name:
                return node
        raise LabError(f"no node named {name!r}")

    def hosts(self) -> list[str]:
        return [f"{LOOPBACK}:{n.port}" for n in self.nodes]

    @property
    def password_file(self) -> Path:
        return self.root / PASSWORD_FILE

    def django_database(
        self, stock: bool = False, nodes: list[Any] | None = None, **overrides: Any
    ) -> dict[str, Any]:
        """A ``DATABASES`` entry listing ``nodes`` (all, in order, by default).

        With ``stock``, Django's own backend set up the way psycopg2 multi-host
        guides show it (its best case, for comparisons): comma-separated HOST
        and PORT strings and ``target_session_attrs=read-write``.
        """
        nodes = nodes if nodes is not None else self.nodes
        options = overrides.pop("OPTIONS", {})
        database = {
            "ENGINE": "django_pg_failover",
            "NAME": APP_DATABASE,
            "USER": APP_USER,
            "PASSWORD": self.password,
            "HOST": [f"{LOOPBACK}:{n.port}" for n in nodes],
            "OPTIONS": options,
        }
        if stock:
            database.update(
                ENGINE="django.db.backends.postgresql",
                HOST=",".join(LOOPBACK for _ in nodes),
                PORT=",".join(str(n.port) for n in nodes),
                OPTIONS={"target_session_attrs": "read-write", **options},
            )
        database.update(overrides)
        return database

    def database_url(
        self, hosts: list[str] | None = None, dbname: str = APP_DATABASE, **params: Any
    ) -> str:
        """libpq's multi-host URL for ``DATABASE_URL`` (:func:`django_pg_failover.config`).

        ``hosts`` are ``host:port`` entries (every node, in order, by default);
        ``params`` go to the query string (``retry_timeout=15``).
        """
        netloc = ",".join(hosts if hosts is not None else self.hosts())
        query = f"?{urlencode(params)}" if params else ""
        password = quote(self.password, safe="")
        return f"postgresql://{APP_USER}:{password}@{netloc}/{quote(dbname, safe='')}{query}"

    def save_password(self) -> None:
        write_private(self.password_file, self.password)

    def close(self, remove: bool = True) -> None:
        raise NotImplementedError


class LiveLabs:
    """Labs this process started: closed at exit, whatever the exit path."""

    def __init__(self) -> None:
        self._labs: set[Lab] = set()
        atexit.register(self.close_all)

    def add(self, lab: Lab) -> None:
        self._labs.add(lab)

    def discard(self, lab: Lab) -> None:
        self._labs.discard(lab)

    def close_all(self) -> None:
        for lab in list(self._labs):
            with suppress(Exception):
                lab.close()


live_labs = LiveLabs()
