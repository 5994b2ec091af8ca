"""A primary and its streaming standbys on loopback, with failover operations."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path

from .binaries import PgInstall, find_install
from .common import (
    APP_DATABASE,
    APP_USER,
    PASSWORD_FILE,
    SERVER_PARAMETERS,
    STATE_FILE,
    Lab,
    NodeStatus,
    create_app_database,
    default_lab_dir,
    default_parent_dir,
    free_port,
    hba_lines,
    ipv6_loopback_available,
    listen_addresses,
    live_labs,
    make_root,
    read_state,
    status_as_dicts,
    write_private,
)
from .errors import LabError, LabTimeout
from .node import LOOPBACK, SUPERUSER, Node, State
from .system import ServerUser, become_subreaper, ensure_runnable, wait_for

# Kept importable from here: code written before the lab had two modes does.
__all__ = [
    "APP_DATABASE",
    "APP_USER",
    "Cluster",
    "FailoverReport",
    "NodeStatus",
    "default_lab_dir",
    "default_parent_dir",
    "free_port",
    "ipv6_loopback_available",
    "status_as_dicts",
]

SERVER_SETTINGS = "".join(
    ["\n# django-pg-failover lab: tests only, never production (fsync is off).\n"]
    + [f"{name} = '{value}'\n" for name, value in SERVER_PARAMETERS.items()]
)
HBA = "\n".join(hba_lines()) + "\n"


@dataclass(frozen=True)
class FailoverReport:
    old_primary: str
    new_primary: str
    fault: str
    fault_seconds: float
    promote_seconds: float
    follow_seconds: float
    rejoin_seconds: float | None
    #: The wait between the fault and the promotion (``promote_delay``), as it ran.
    waited_seconds: float = 0.0


class Cluster(Lab):
    """A lab cluster: one primary and N streaming standbys on loopback ports.

    Build one with :meth:`create` (or :meth:`load` one a ``lab start`` left
    running). Every fault is real: processes are killed, stopped and promoted.
    """

    def __init__(
        self,
        root: Path,
        nodes: list[Node],
        primary: str,
        password: str,
        synchronous: bool = False,
        detach: bool = False,
    ) -> None:
        self.root = Path(root)
        self.nodes = nodes
        self._primary = primary
        self.password = password
        self.synchronous = synchronous
        self.detach = detach
        self._golden_primary: str | None = None
        self._dirty = False
        if not detach:
            live_labs.add(self)

    def __repr__(self) -> str:
        return f"<Cluster {self.root} primary={self._primary} nodes={len(self.nodes)}>"

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- building ---------------------------------------------------------------

    @classmethod
    def create(
        cls,
        standbys: int = 2,
        install: PgInstall | None = None,
        synchronous: bool = False,
        root: Path | str | None = None,
        detach: bool = False,
        password: str | None = None,
    ) -> Cluster:
        """Build and start a primary with ``standbys`` streaming standbys."""
        user = ServerUser.resolve()
        install = ensure_runnable(install or find_install(), user)
        if not detach:
            become_subreaper()
        root = make_root(root, user)
        socket_dir = root / "sockets"
        socket_dir.mkdir(exist_ok=True)
        user.chown(socket_dir)
        listen = listen_addresses()
        nodes = [
            Node(f"n{i}", free_port(), root / f"n{i}", install, user, socket_dir, listen, detach)
            for i in range(standbys + 1)
        ]
        cluster = cls(
            root,
            nodes,
            primary=nodes[0].name,
            password=password or secrets.token_urlsafe(18),
            synchronous=synchronous,
            detach=detach,
        )
        try:
            cluster._build()
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _build(self) -> None:
        primary = self.nodes[0]
        user = primary.user
        user.run(
            [
                primary.install.program("initdb"),
                "-D",
                str(primary.datadir),
                "-U",
                SUPERUSER,
                "--data-checksums",
                "--no-sync",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ]
        )
        with open(primary.datadir / "postgresql.conf", "a") as conf:
            conf.write(SERVER_SETTINGS)
        (primary.datadir / "pg_hba.conf").write_text(HBA)
        primary.start()
        with closing(primary.connect()) as conn:
            create_app_database(conn, self.password)
        for standby in self.nodes[1:]:
            self._clone_from(primary, standby)
        if self.synchronous:
            # Only now: with no standby yet, every commit above would wait forever.
            for node in self.nodes:
                with open(node.datadir / "postgresql.conf", "a") as conf:
                    conf.write("synchronous_standby_names = 'ANY 1 (*)'\n")
            primary.query("SELECT pg_reload_conf()")
        for standby in self.nodes[1:]:
            standby.start(wait=False)
        for standby in self.nodes[1:]:
            standby.wait_ready()
        self.wait_streaming()
        self.save_state()
        self.snapshot()

    def _clone_from(self, source: Node, target: Node) -> None:
        target.user.run(
            [
                target.install.program("pg_basebackup"),
                "-h",
                LOOPBACK,
                "-p",
                str(source.port),
                "-U",
                SUPERUSER,
                "-D",
                str(target.datadir),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ]
        )

    # -- roles ----------------------------------------------------------------

    @property
    def primary(self) -> Node:
        """The node the lab made primary last (it may be down: ask ``state``)."""
        return self.node(self._primary)

    @property
    def standbys(self) -> list[Node]:
        return [n for n in self.nodes if n.name != self._primary]

    @property
    def running_standbys(self) -> list[Node]:
        return [n for n in self.standbys if n.state is State.UP]

    @property
    def dirty(self) -> bool:
        """True once anything changed the cluster since it was built or reset."""
        return self._dirty

    # -- faults -------------------------------------------------------------------

    def crash(self, node: Node | None = None) -> Node:
        node = node or self.primary
        self._dirty = True
        node.crash()
        return node

    def kill_postmaster(self, node: Node | None = None) -> Node:
        """``kill -9`` of the postmaster alone (an OOM killer's choice, say): its sessions
        end themselves, each sending its client a goodbye before it closes."""
        node = node or self.primary
        self._dirty = True
        node.kill_postmaster()
        return node

    def hang(self, node: Node | None = None, include_sessions: bool = True) -> Node:
        node = node or self.primary
        self._dirty = True
        node.hang(include_sessions)
        return node

    def resume(self, node: Node) -> None:
        self._dirty = True
        node.resume()

    def stop(self, node: Node | None = None, mode: str = "fast") -> Node:
        node = node or self.primary
        self._dirty = True
        node.stop(mode)
        return node

    def start(self, node: Node) -> None:
        self._dirty = True
        node.start()

    def make_read_only(self, node: Node | None = None) -> Node:
        """Fence a node by making every new transaction read-only.

        What a demoted primary looks like to sessions that stay connected to it
        (cluster managers fence this way; Aurora's old writer becomes a reader).
        Existing sessions see 25006 on their next write.
        """
        node = node or self.primary
        self._dirty = True
        with closing(node.connect()) as conn, conn.cursor() as cur:
            cur.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            cur.execute("SELECT pg_reload_conf()")
        return node

    def execute(self, *statements: str, dbname: str = "postgres") -> None:
        """Run statements on the primary as the superuser, and wait for the standbys
        to replay them (roles, databases, grants: what a test sets up)."""
        self._dirty = True
        with closing(self.primary.connect(dbname)) as conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
        self.wait_replayed()

    def reject(self, user: str, nodes: list[Node] | None = None) -> None:
        """Make ``pg_hba.conf`` reject ``user`` on ``nodes`` (every node by default).

        pg_hba.conf is each server's own (it is not replicated): a standby can
        refuse a user its primary accepts.
        """
        self._dirty = True
        lines = "".join(
            f"{kind:<8}all  {user}  {address}  reject\n"
            for kind, address in (("local", ""), ("host", "127.0.0.1/32"), ("host", "::1/128"))
        )
        for node in nodes if nodes is not None else self.nodes:
            hba = node.datadir / "pg_hba.conf"
            hba.write_text(lines + hba.read_text())
            node.query("SELECT pg_reload_conf()")

    def promote(self, node: Node | None = None) -> Node:
        """Promote a standby (the most advanced one by default)."""
        node = node or self.most_advanced_standby()
        self._dirty = True
        node.promote()
        self._primary = node.name
        self.save_state()
        return node

    def most_advanced_standby(self) -> Node:
        """The reachable standby that received the most WAL: promoting it loses nothing."""
        best: tuple[int, Node] | None = None
        for node in self.standbys:
            if node.state is not State.UP:
                continue
            with suppress(Exception):
                position = node.wal_position()
                if best is None or position > best[0]:
                    best = (position, node)
        if best is None:
            raise LabError("no reachable standby to promote")
        return best[1]

    def follow(self, nodes: list[Node] | None = None, timeout: float = 30) -> None:
        """Point standbys at the current primary; rewind any that cannot follow."""
        primary = self.primary
        nodes = [n for n in (nodes or self.standbys) if n.state is State.UP]
        self._dirty = True
        for node in nodes:
            node.set_primary(primary)
        try:
            self.wait_streaming(nodes, timeout=timeout)
        except LabTimeout:
            streaming = self._streaming_names()
            for node in nodes:
                if node.name not in streaming:
                    self.rejoin(node)

    def rejoin(self, node: Node, timeout: float = 60) -> None:
        """Bring a former primary (or a diverged standby) back as a standby.

        A hung node is fenced (killed), never resumed: once resumed it would take
        writes as a second primary.
        """
        if node.name == self._primary:
            raise LabError(f"{node.name} is the primary; promote another node first")
        self._dirty = True
        if node.state is State.HUNG:
            node.crash()
        elif node.state is State.UP:
            node.stop("fast")
        primary = self.primary
        # Without a checkpoint the new timeline is not in the control file yet,
        # and pg_rewind concludes "no rewind required" for a node that diverged.
        primary.query("CHECKPOINT")
        node.user.run(
            [
                node.install.program("pg_rewind"),
                "-D",
                str(node.datadir),
                "--source-server",
                primary.conninfo(node) + " dbname=postgres",
                "--write-recovery-conf",
                "--no-sync",
            ],
            timeout=timeout,
        )
        node.start()
        self.wait_streaming([node], timeout=timeout)

    def failover(
        self,
        fault: str = "crash",
        target: Node | None = None,
        promote_delay: float = 0.0,
        rejoin: bool = False,
    ) -> FailoverReport:
        """Fail the primary (crash, hang or stop), promote a standby, re-point the rest."""
        old = self.primary
        started = time.monotonic()
        if fault == "crash":
            self.crash(old)
        elif fault == "hang":
            self.hang(old)
        elif fault == "stop":
            self.stop(old, "fast")
        else:
            raise LabError(f"unknown fault {fault!r}: use crash, hang or stop")
        faulted = time.monotonic()
        if promote_delay:
            time.sleep(promote_delay)  # the outage itself, not a wait for a condition
        waited = time.monotonic()
        new = self.promote(target)
        promoted = time.monotonic()
        others = [n for n in self.standbys if n is not old]
        self.follow(others)
        followed = time.monotonic()
        rejoin_seconds = None
        if rejoin:
            self.rejoin(old)
            rejoin_seconds = time.monotonic() - followed
        return FailoverReport(
            old_primary=old.name,
            new_primary=new.name,
            fault=fault,
            fault_seconds=faulted - started,
            promote_seconds=promoted - waited,
            follow_seconds=followed - promoted,
            rejoin_seconds=rejoin_seconds,
            waited_seconds=waited - faulted,
        )

    def switchover(self, target: Node | None = None) -> Node:
        """A planned role change: nothing is lost, the old primary follows."""
        old = self.primary
        target = target or self.most_advanced_standby()
        self._dirty = True
        # A fast shutdown sends all WAL, shutdown checkpoint included, to standbys.
        position = old.wal_position()
        old.stop("fast")
        wait_for(
            lambda: target.replay_position() >= position,
            30,
            f"{target.name} to replay the old primary's last WAL",
        )
        self.promote(target)
        self.follow([n for n in self.standbys if n is not old])
        self.rejoin(old)
        return target

    # -- waiting --------------------------------------------------------------------

    def _streaming_names(self) -> set[str]:
        try:
            rows = self.primary.query(
                "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
            )
        except Exception:
            return set()
        return {row[0] for row in rows}

    def wait_streaming(self, nodes: list[Node] | None = None, timeout: float = 30) -> None:
        """Wait until each (running) standby streams from the current primary."""
        wanted = {n.name for n in (nodes if nodes is not None else self.running_standbys)}
        wait_for(
            lambda: wanted <= self._streaming_names(),
            timeout,
            f"{', '.join(sorted(wanted))} to stream from {self._primary}",
            interval=0.05,
        )

    def wait_replayed(self, nodes: list[Node] | None = None, timeout: float = 30) -> None:
        """Wait until (running) standbys replayed everything the primary wrote so far."""
        target = self.primary.wal_position()
        for node in nodes if nodes is not None else self.running_standbys:
            wait_for(
                lambda node=node: node.replay_position() >= target,
                timeout,
                f"{node.name} to replay up to the primary's WAL position",
            )

    # -- status -----------------------------------------------------------------------

    def status(self) -> list[NodeStatus]:
        primary_position = None
        rows = []
        for node in self.nodes:
            state = node.state
            role, timeline, position, replay = "down", None, None, None
            if state is State.UP:
                try:
                    role = "standby" if node.is_in_recovery() else "primary"
                    timeline = node.timeline()
                    position = node.wal_position()
                    replay = node.replay_position()
                except Exception:
                    role = "unreachable"
            elif state is State.HUNG:
                role = "hung"
            if role == "primary":
                primary_position = position
            rows.append((node, state, role, timeline, position, replay))
        return [
            NodeStatus(
                name=node.name,
                port=node.port,
                state=state.value,
                role=role,
                timeline=timeline,
                wal_position=position,
                replay_lag_bytes=(
                    max(primary_position - replay, 0)
                    if role == "standby" and primary_position is not None
                    else None
                ),
            )
            for node, state, role, timeline, position, replay in rows
        ]

    # -- snapshot and reset ----------------------------------------------------------

    @property
    def _golden(self) -> Path:
        return self.root / "golden"

    def snapshot(self) -> None:
        """Keep a copy of the current (healthy) cluster for :meth:`reset`."""
        self.primary.stop("fast")  # WAL up to the shutdown checkpoint reaches standbys
        for node in self.standbys:
            node.stop("fast")
        shutil.rmtree(self._golden, ignore_errors=True)
        self._golden.mkdir()
        for node in self.nodes:
            subprocess.run(
                ["cp", "-a", str(node.datadir), str(self._golden / node.name)], check=True
            )
        self._golden_primary = self._primary
        self._start_all()
        self.save_state()
        self._dirty = False

    def reset(self) -> None:
        """Throw the current state away and restart from the last snapshot."""
        if self._golden_primary is None:
            raise LabError("no snapshot to reset to")
        for node in self.nodes:
            if node.state is not State.DOWN:
                node.crash()
            shutil.rmtree(node.datadir, ignore_errors=True)
            subprocess.run(
                ["cp", "-a", str(self._golden / node.name), str(node.datadir)], check=True
            )
        self._primary = self._golden_primary
        self._start_all()
        self.save_state()
        self._dirty = False

    def _start_all(self) -> None:
        self.primary.start(wait=False)
        for node in self.standbys:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready()
        self.wait_streaming()

    # -- state on disk (for the command line) ----------------------------------------

    def save_state(self) -> None:
        node0 = self.nodes[0]
        state = {
            "mode": "plain",
            "bindir": str(node0.install.bindir),
            "major": node0.install.major,
            "source": node0.install.source,
            "user": node0.user.name,
            "primary": self._primary,
            "golden_primary": self._golden_primary,
            "synchronous": self.synchronous,
            "listen_addresses": node0.listen_addresses,
            "nodes": [{"name": n.name, "port": n.port} for n in self.nodes],
        }
        write_private(self.root / STATE_FILE, json.dumps(state, indent=2))
        self.save_password()

    @classmethod
    def load(cls, root: Path | str) -> Cluster:
        """Attach to a lab left running by ``python -m django_pg_failover.lab start``."""
        root = Path(root)
        state = read_state(root)
        if state.get("mode", "plain") != "plain":
            raise LabError(f"the lab in {root} is run by {state['mode']}: use load_lab()")
        install = PgInstall(state["major"], Path(state["bindir"]), state["source"])
        user = ServerUser.resolve()
        nodes = [
            Node(
                n["name"],
                n["port"],
                root / n["name"],
                install,
                user,
                root / "sockets",
                state["listen_addresses"],
                detach=True,
            )
            for n in state["nodes"]
        ]
        password = (root / PASSWORD_FILE).read_text()
        cluster = cls(root, nodes, state["primary"], password, state["synchronous"], True)
        cluster._golden_primary = state.get("golden_primary")
        return cluster

    def close(self, remove: bool = True) -> None:
        """Stop every server and (by default) delete the lab's files."""
        live_labs.discard(self)
        for node in self.nodes:
            if node.state is State.DOWN:
                continue
            try:
                node.stop("immediate", timeout=10)
            except LabError:
                node.crash()
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)
