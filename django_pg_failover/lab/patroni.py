"""A PostgreSQL cluster run by Patroni and etcd on loopback, with real faults.

The lab's other mode (:class:`~django_pg_failover.lab.Cluster`) promotes and
rewinds servers itself. Here real Patroni agents do it, the way production
clusters fail over: the lab only starts them, hurts them (kills, freezes) and
asks them for switchovers, then waits for what Patroni does about it.

Patroni's REST answers can be stale (``/primary`` stayed 200 through a crash
here), so every wait checks the servers themselves as well.

:meth:`PatroniCluster.start_haproxy` puts HAProxy in front, steered by
those same answers (:mod:`.haproxy`), for the application to reach through
one address.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .binaries import PgInstall, find_install
from .common import (
    LOOPBACK,
    PASSWORD_FILE,
    SERVER_PARAMETERS,
    STATE_FILE,
    SUPERUSER,
    Lab,
    create_app_database,
    free_port,
    hba_lines,
    listen_addresses,
    live_labs,
    make_root,
    read_state,
    write_private,
)
from .errors import LabError, LabTimeout
from .etcd import Etcd, find_etcd
from .haproxy import HAProxy, ProxiedServer, find_haproxy
from .node import Node
from .patroni_member import STREAMING, SUPERVISOR, Member, MemberStatus, MemberView
from .patroni_runtime import patroni_python
from .system import ServerUser, ensure_runnable, wait_for

# Patroni raises any ttl below 20 s to 20 (with a warning only): a dead leader
# is replaced after about this long. loop_wait + 2 * retry_timeout <= ttl.
TTL = 20
LOOP_WAIT = 1
RETRY_TIMEOUT = 5
REPLICATION_USER = "replicator"


@dataclass
class LeaderChange:
    """Patroni named a new leader (None: none) at ``at``; its server took writes at ``writable``."""

    at: float  # time.monotonic(), as every time here
    leader: str | None
    writable: float | None = None


@dataclass
class LeaderWatch:
    """Polls Patroni's ``/cluster`` in a thread and notes every change of leader.

    For each leader it also notes when its server first answered as a primary:
    Patroni names the leader a moment before that.
    """

    cluster: PatroniCluster
    interval: float = 0.1
    changes: list[LeaderChange] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> LeaderWatch:
        self._thread = threading.Thread(target=self._run, name="patroni-leader-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        current: LeaderChange | None = None
        while not self._stop.is_set():
            leader = self.cluster.patroni_leader()
            if current is None or leader != current.leader:
                current = LeaderChange(time.monotonic(), leader)
                self.changes.append(current)
            if leader and current.writable is None and self.cluster.member(leader).is_primary():
                current.writable = time.monotonic()
            self._stop.wait(self.interval)

    def new_leader_after(self, moment: float, old: str | None = None) -> LeaderChange | None:
        """The first leader other than ``old`` named after ``moment`` that took writes."""
        for change in self.changes:
            if change.at > moment and change.leader not in (None, old) and change.writable:
                return change
        return None


class PatroniCluster(Lab):
    """PostgreSQL under Patroni agents, with etcd, on free loopback ports.

    Build one with :meth:`create` (or :meth:`load` one a ``lab start
    --patroni`` left running). Members are named ``n0``, ``n1``...; ``n0``
    bootstraps the cluster and leads first.
    """

    def __init__(
        self,
        root: Path,
        members: list[Member],
        etcd: Etcd | None,
        password: str,
        python: str,
        user: ServerUser,
        scope: str,
        synchronous: bool = False,
        detach: bool = False,
        ttl: int = TTL,
        loop_wait: int = LOOP_WAIT,
        retry_timeout: int = RETRY_TIMEOUT,
    ) -> None:
        self.root = Path(root)
        self.nodes = members
        self.etcd = etcd
        self.password = password
        self.python = python
        self.user = user
        self.scope = scope
        self.synchronous = synchronous
        self.detach = detach
        self.ttl, self.loop_wait, self.retry_timeout = ttl, loop_wait, retry_timeout
        self._synchronous_now = synchronous
        self._dirty = False
        #: HAProxy in front of the members, once started (:meth:`start_haproxy`).
        self.haproxy: HAProxy | None = None
        if not detach:
            live_labs.add(self)

    def __repr__(self) -> str:
        return f"<PatroniCluster {self.root} members={len(self.nodes)}>"

    def __enter__(self) -> PatroniCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def members(self) -> list[Member]:
        return self.nodes

    def member(self, name: str) -> Member:
        return self.node(name)

    @property
    def dirty(self) -> bool:
        """True once a fault or role change happened since the build or the last reset."""
        return self._dirty

    # -- building ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        members: int = 3,
        install: PgInstall | None = None,
        synchronous: bool = False,
        root: Path | str | None = None,
        detach: bool = False,
        password: str | None = None,
        ttl: int = TTL,
        loop_wait: int = LOOP_WAIT,
        retry_timeout: int = RETRY_TIMEOUT,
        timeout: float = 120,
    ) -> PatroniCluster:
        """Start etcd and ``members`` Patroni agents; wait for a leader and streaming replicas."""
        if members < 2:
            raise LabError("a Patroni cluster needs at least 2 members")
        user = ServerUser.resolve()
        install = ensure_runnable(install or find_install(), user)
        python = patroni_python(user)
        find_etcd()  # fail before anything starts when etcd is missing
        root = make_root(root, user)
        socket_dir = root / "sockets"
        socket_dir.mkdir(exist_ok=True)
        user.chown(socket_dir)
        shutil.copy(SUPERVISOR, root / SUPERVISOR.name)
        os.chmod(root / SUPERVISOR.name, 0o644)
        listen = listen_addresses()
        nodes = [
            Member(
                f"n{i}",
                port,
                free_port(),
                Node(f"n{i}", port, root / f"n{i}", install, user, socket_dir, listen, True),
            )
            for i, port in enumerate(free_port() for _ in range(members))
        ]
        cluster = cls(
            root,
            nodes,
            None,
            password or secrets.token_urlsafe(18),
            python,
            user,
            scope=root.name,
            synchronous=synchronous,
            detach=detach,
            ttl=ttl,
            loop_wait=loop_wait,
            retry_timeout=retry_timeout,
        )
        try:
            cluster._build(timeout)
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _build(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.etcd = Etcd.start(self.root, detach=self.detach)
        for member in self.members:
            self._write_config(member)
        # n0 first, so that it wins the bootstrap race and the others clone it.
        first, *others = self.members
        first.start_agent(self.python, self.user, self.detach)
        wait_for(
            lambda: first.check_not_exited() and first.is_primary(),
            deadline - time.monotonic(),
            f"{first.name} to bootstrap the cluster",
            interval=0.1,
        )
        for member in others:
            member.start_agent(self.python, self.user, self.detach)
        self.wait_healthy(deadline - time.monotonic())
        with closing(first.pg.connect()) as conn:
            # Patroni 4 creates no application users: this is the lab's job.
            create_app_database(conn, self.password)
        self.save_state()

    def _write_config(self, member: Member) -> None:
        """The agent's configuration (JSON is YAML): no secret in it."""
        cluster_wide = dict(SERVER_PARAMETERS)
        config = {
            "scope": self.scope,
            "namespace": "/django-pg-failover-lab/",
            "name": member.name,
            "log": {"level": "INFO", "format": "%(asctime)s %(levelname)s: %(message)s"},
            "restapi": {
                "listen": f"{LOOPBACK}:{member.api_port}",
                "connect_address": f"{LOOPBACK}:{member.api_port}",
            },
            "etcd3": {"hosts": [self.etcd.host], "protocol": "http"},
            "bootstrap": {
                "dcs": {
                    "ttl": self.ttl,
                    "loop_wait": self.loop_wait,
                    "retry_timeout": self.retry_timeout,
                    "maximum_lag_on_failover": 1024 * 1024,
                    "synchronous_mode": self.synchronous,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": cluster_wide,
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "data-checksums", "no-sync"],
            },
            "postgresql": {
                "listen": f"{member.pg.listen_addresses}:{member.port}",
                "connect_address": f"{LOOPBACK}:{member.port}",
                "data_dir": str(member.pg.datadir),
                "bin_dir": str(member.pg.install.bindir),
                "pgpass": str(self.root / f"{member.name}.pgpass"),
                "authentication": {
                    "superuser": {"username": SUPERUSER},
                    "replication": {"username": REPLICATION_USER},
                },
                "parameters": {"unix_socket_directories": str(member.pg.socket_dir)},
                "pg_hba": hba_lines(),
                "basebackup": [{"checkpoint": "fast"}],
            },
        }
        write_private(member.config_path, json.dumps(config, indent=2))
        self.user.chown(member.config_path)

    # -- HAProxy in front ---------------------------------------------------------------

    def start_haproxy(self, timeout: float = 30) -> HAProxy:
        """HAProxy in front of the members (:mod:`.haproxy`), started once; returned when
        it routes to the leader alone."""
        if self.haproxy is None or self.haproxy.pid is None:
            find_haproxy()  # the missing program named before anything starts
            servers = [ProxiedServer(m.name, m.port, m.api_port) for m in self.members]
            self.haproxy = HAProxy.start(self.root, servers, self.user, self.detach, timeout)
            self.save_state()
        self.haproxy.wait_routes_to({self.leader().name}, timeout)
        return self.haproxy

    def stop_haproxy(self) -> None:
        if self.haproxy is not None:
            self.haproxy.stop()
            self.haproxy = None
            self.save_state()

    def proxy_database(self, stock: bool = False, **overrides: Any) -> dict[str, Any]:
        """A ``DATABASES`` entry whose ``HOST`` is HAProxy's address alone."""
        if self.haproxy is None:
            raise LabError("HAProxy is not running: start_haproxy() first")
        return self.django_database(stock=stock, nodes=[self.haproxy], **overrides)

    # -- Patroni's view ---------------------------------------------------------------

    def _api(
        self, method: str, path: str, body: dict | None = None, timeout: float = 2.0
    ) -> tuple[int, Any]:
        """Ask the first member whose agent answers (a frozen one would hang us)."""
        errors = []
        for member in self.members:
            if member.agent_state != "up":
                continue
            try:
                return member.api(method, path, body, timeout)
            except OSError as exc:
                errors.append(f"{member.name}: {exc}")
        raise LabError(
            f"no Patroni agent answered {method} {path}: {'; '.join(errors) or 'none up'}"
        )

    def view(self, member: Member | None = None) -> list[MemberView]:
        """Patroni's ``/cluster``: what the agents and etcd believe (it can be stale).

        Any member answers (or ``member``); each answers from its own last look
        at etcd, up to ``loop_wait`` old.
        """
        if member is None:
            status, body = self._api("GET", "/cluster", timeout=1.0)
        else:
            try:
                status, body = member.api("GET", "/cluster", timeout=1.0)
            except OSError as exc:
                raise LabError(f"{member.name} did not answer GET /cluster: {exc}") from None
        if status != 200 or not isinstance(body, dict):
            raise LabError(f"GET /cluster answered {status}: {body}")
        return [
            MemberView(
                m["name"], m.get("role", ""), m.get("state", ""), m.get("timeline"), m.get("lag")
            )
            for m in body.get("members", [])
        ]

    def patroni_leader(self) -> str | None:
        """The member Patroni names leader right now, or None (or unknown)."""
        try:
            leaders = [m.name for m in self.view() if m.role in ("leader", "standby_leader")]
        except LabError:
            return None
        return leaders[0] if leaders else None

    def leader(self) -> Member:
        """The leader by Patroni's word *and* by its server's: it is out of recovery."""
        name = self.patroni_leader()
        if name is None:
            raise LabError("Patroni names no leader now")
        member = self.member(name)
        if not member.is_primary():
            raise LabError(f"Patroni names {name} leader, but its server is not a primary now")
        return member

    @property
    def replicas(self) -> list[Member]:
        leader = self.patroni_leader()
        return [m for m in self.members if m.name != leader]

    # -- waiting ----------------------------------------------------------------------

    def _healthy(self, synchronous: bool | None) -> bool:
        for member in self.members:
            member.check_not_exited()
            if member.agent_state != "up":
                return False
        name = self.patroni_leader()
        if name is None:
            return False
        try:
            # The leader's own view: it writes the synchronous standby's name
            # to etcd, and another member may not have read it yet.
            view = {m.name: m for m in self.view(self.member(name))}
        except LabError:
            return False
        leader = view.get(name)
        if leader is None or leader.role != "leader" or leader.state != "running":
            return False
        if set(view) != {m.name for m in self.members}:
            return False
        replicas = [m for m in view.values() if m is not leader]
        if not all(
            m.is_replica and m.state == STREAMING and m.timeline == leader.timeline
            for m in replicas
        ):
            return False
        sync_standbys = {m.name for m in replicas if m.role == "sync_standby"}
        if synchronous is not None and synchronous != bool(sync_standbys):
            return False
        # Patroni may be behind: the servers must agree.
        try:
            pg = self.member(leader.name).pg
            rows = pg.query(
                "SELECT application_name, sync_state FROM pg_stat_replication "
                "WHERE state = 'streaming'"
            )
            names = pg.scalar("SHOW synchronous_standby_names")
        except Exception:
            return False
        streaming = dict(rows)
        if not {m.name for m in replicas} <= set(streaming):
            return False
        # A change of synchronous_mode shows in /cluster at once, but the leader
        # acts on it at its next cycle, and names a synchronous standby in etcd
        # only once the server made it one (until then nobody may take over):
        # wait until etcd, the server's setting and replication all agree.
        named = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", names or "")) - {"ANY", "FIRST"}
        if named != sync_standbys:
            return False
        if any(streaming[m] not in ("sync", "quorum") for m in sync_standbys):
            return False
        return pg.scalar("SELECT NOT pg_is_in_recovery()") is True

    def wait_healthy(self, timeout: float = 60) -> Member:
        """Wait until one leader runs and every other member streams from it; return the leader."""
        try:
            wait_for(
                lambda: self._healthy(self._synchronous_now),
                timeout,
                "a leader with every member streaming from it",
                interval=0.1,
            )
        except LabTimeout as exc:
            raise LabTimeout(f"{exc}\n{self.describe()}") from None
        return self.leader()

    def wait_leader(self, other_than: Member | None = None, timeout: float = 60) -> Member:
        """Wait for a leader (other than ``other_than``) whose server takes writes."""

        def probe() -> Member | None:
            name = self.patroni_leader()
            if name is None or (other_than is not None and name == other_than.name):
                return None
            member = self.member(name)
            return member if member.is_primary() else None

        try:
            return wait_for(probe, timeout, "Patroni to elect a new leader", interval=0.05)
        except LabTimeout as exc:
            raise LabTimeout(f"{exc}\n{self.describe(lines=40)}") from None

    def wait_streaming(self, member: Member, timeout: float = 60) -> None:
        def probe() -> bool:
            member.check_not_exited()
            try:
                view = {m.name: m for m in self.view()}
            except LabError:
                return False
            mine = view.get(member.name)
            return mine is not None and mine.is_replica and mine.state == STREAMING

        wait_for(probe, timeout, f"{member.name} to stream from the leader", interval=0.1)

    def describe(self, lines: int = 8) -> str:
        """Patroni's view and each agent's last log lines (for error messages)."""
        try:
            view = "\n".join(f"  {m}" for m in self.view())
        except LabError as exc:
            view = f"  ({exc})"
        logs = "\n".join(
            f"--- {m.name} (agent {m.agent_state}):\n{m.pg.log_tail(lines)}" for m in self.members
        )
        return f"Patroni's view:\n{view}\n{logs}"

    @contextmanager
    def watch(self, interval: float = 0.1) -> Iterator[LeaderWatch]:
        """Record the leader changes while the block runs (see :class:`LeaderWatch`)."""
        watch = LeaderWatch(self, interval).start()
        try:
            yield watch
        finally:
            watch.stop()

    # -- faults -------------------------------------------------------------------------

    def _target(self, member: Member | None) -> Member:
        return member if member is not None else self.leader()

    def kill_postmaster(self, member: Member | None = None) -> Member:
        """``kill -9`` of the (leader's) postmaster: Patroni restarts it in place."""
        member = self._target(member)
        self._dirty = True
        member.kill_postmaster()
        return member

    def kill_node(self, member: Member | None = None) -> Member:
        """``kill -9`` of a member's agent and PostgreSQL: failover after the ttl."""
        member = self._target(member)
        self._dirty = True
        member.kill()
        return member

    def freeze(self, member: Member | None = None) -> Member:
        """SIGSTOP of a member's agent and PostgreSQL (no watchdog can fence it)."""
        member = self._target(member)
        self._dirty = True
        member.freeze()
        return member

    def thaw(self, member: Member) -> None:
        self._dirty = True
        member.thaw()

    def _candidate(self, leader: Member, candidate: Member | None) -> Member:
        if candidate is not None:
            return candidate
        view = self.view()
        # In synchronous mode Patroni moves the leader only to the sync standby.
        for role in ("sync_standby", "replica"):
            for m in view:
                if m.role == role and m.state == STREAMING and m.name != leader.name:
                    return self.member(m.name)
        raise LabError(f"no streaming replica to hand the leader over to\n{self.describe()}")

    def switchover(self, candidate: Member | None = None, timeout: float = 60) -> Member:
        """A planned switchover through Patroni's REST API; returns the new leader."""
        leader = self.leader()
        candidate = self._candidate(leader, candidate)
        self._dirty = True
        body = {"leader": leader.name, "candidate": candidate.name}
        status, answer = self._api("POST", "/switchover", body, timeout=timeout)
        if status != 200:
            raise LabError(f"switchover to {candidate.name} refused ({status}): {answer}")
        return self.wait_leader(other_than=leader, timeout=timeout)

    def failover(self, candidate: Member | None = None, timeout: float = 60) -> Member:
        """A manual failover through Patroni's REST API (no check of the old leader)."""
        leader = self.leader()
        candidate = self._candidate(leader, candidate)
        self._dirty = True
        status, answer = self._api(
            "POST", "/failover", {"candidate": candidate.name}, timeout=timeout
        )
        if status != 200:
            raise LabError(f"failover to {candidate.name} refused ({status}): {answer}")
        return self.wait_leader(other_than=leader, timeout=timeout)

    def rejoin(self, member: Member, timeout: float = 90) -> None:
        """Bring a killed or frozen member back; Patroni rewinds it if it must."""
        self._dirty = True
        self._revive(member)
        self.wait_streaming(member, timeout)

    def _revive(self, member: Member) -> None:
        if member.agent_state == "frozen":
            member.thaw()
        elif member.agent_state == "down":
            if member.supervisor_pid is not None:  # PostgreSQL outlived its agent
                member.kill()
            member.start_agent(self.python, self.user, self.detach)

    def set_synchronous(self, on: bool, timeout: float = 30) -> None:
        """Turn Patroni's ``synchronous_mode`` on or off, and wait until it is in force."""
        self._dirty = True
        status, answer = self._api("PATCH", "/config", {"synchronous_mode": on})
        if status != 200:
            raise LabError(f"PATCH /config answered {status}: {answer}")
        self._synchronous_now = on
        self.wait_healthy(timeout)

    # -- reset ------------------------------------------------------------------------

    def heal(self, timeout: float = 120) -> Member:
        """Bring every member back (thaw, restart, reinitialise) and return the leader.

        Whichever member leads stays the leader; a member that cannot rejoin
        by itself (its timeline diverged beyond pg_rewind) is reinitialised
        from the leader.
        """
        deadline = time.monotonic() + timeout
        self._dirty = True
        for member in self.members:
            self._revive(member)
        leader = self.wait_leader(timeout=deadline - time.monotonic())
        for member in self.members:
            if member is leader:
                continue
            try:
                self.wait_streaming(member, timeout=min(45, deadline - time.monotonic()))
            except LabTimeout:
                member.api("POST", "/reinitialize", {"force": True}, timeout=10)
                self.wait_streaming(member, timeout=deadline - time.monotonic())
        return self.wait_healthy(deadline - time.monotonic())

    def reset(self, timeout: float = 120) -> Member:
        """:meth:`heal`, and ``synchronous_mode`` back to how the cluster was built.

        No rebuild: the data stays, and so does the leader of the moment.
        """
        deadline = time.monotonic() + timeout
        leader = self.heal(timeout)
        if self._synchronous_now != self.synchronous:
            self.set_synchronous(self.synchronous, timeout=deadline - time.monotonic())
            leader = self.leader()
        if self.haproxy is not None:
            self.haproxy.wait_routes_to({leader.name}, timeout=deadline - time.monotonic())
        self._dirty = False
        return leader

    # -- status -------------------------------------------------------------------------

    def status(self) -> list[MemberStatus]:
        try:
            view = {m.name: m for m in self.view()}
        except LabError:
            view = {}
        rows = []
        for member in self.members:
            seen = view.get(member.name)
            agent = member.agent_state
            if agent == "frozen":
                server = "frozen"
            elif member.pg.pid is None:
                server = "down"
            else:
                try:
                    server = "standby" if member.pg.is_in_recovery() else "primary"
                except Exception:
                    server = "unreachable"
            rows.append(
                MemberStatus(
                    name=member.name,
                    port=member.port,
                    api_port=member.api_port,
                    agent=agent,
                    role=seen.role if seen else None,
                    state=seen.state if seen else None,
                    timeline=seen.timeline if seen else None,
                    lag=seen.lag if seen else None,
                    server=server,
                )
            )
        return rows

    # -- state on disk (for the command line) ----------------------------------------

    def save_state(self) -> None:
        node0 = self.members[0].pg
        state = {
            "mode": "patroni",
            "bindir": str(node0.install.bindir),
            "major": node0.install.major,
            "source": node0.install.source,
            "user": self.user.name,
            "python": self.python,
            "scope": self.scope,
            "synchronous": self.synchronous,
            "ttl": self.ttl,
            "loop_wait": self.loop_wait,
            "retry_timeout": self.retry_timeout,
            "listen_addresses": node0.listen_addresses,
            "etcd": {
                "binary": str(self.etcd.binary),
                "client_port": self.etcd.client_port,
                "peer_port": self.etcd.peer_port,
                "pid": self.etcd.pid,
            },
            "members": [
                {
                    "name": m.name,
                    "port": m.port,
                    "api_port": m.api_port,
                    "supervisor_pid": m.supervisor_pid,
                }
                for m in self.members
            ],
            "haproxy": self.haproxy.state() if self.haproxy is not None else None,
        }
        write_private(self.root / STATE_FILE, json.dumps(state, indent=2))
        self.save_password()

    @classmethod
    def load(cls, root: Path | str) -> PatroniCluster:
        """Attach to a lab left running by ``python -m django_pg_failover.lab start --patroni``."""
        root = Path(root)
        state = read_state(root)
        if state.get("mode") != "patroni":
            raise LabError(f"the lab in {root} is not run by Patroni")
        install = PgInstall(state["major"], Path(state["bindir"]), state["source"])
        user = ServerUser.resolve()
        members = [
            Member(
                m["name"],
                m["port"],
                m["api_port"],
                Node(
                    m["name"],
                    m["port"],
                    root / m["name"],
                    install,
                    user,
                    root / "sockets",
                    state["listen_addresses"],
                    detach=True,
                ),
                supervisor_pid=m["supervisor_pid"],
            )
            for m in state["members"]
        ]
        e = state["etcd"]
        etcd = Etcd(Path(e["binary"]), root / "etcd", e["client_port"], e["peer_port"], e["pid"])
        cluster = cls(
            root,
            members,
            etcd,
            (root / PASSWORD_FILE).read_text(),
            state["python"],
            user,
            state["scope"],
            synchronous=state["synchronous"],
            detach=True,
            ttl=state["ttl"],
            loop_wait=state["loop_wait"],
            retry_timeout=state["retry_timeout"],
        )
        if state.get("haproxy"):
            cluster.haproxy = HAProxy.from_state(root, state["haproxy"])
        return cluster

    def close(self, remove: bool = True) -> None:
        """Kill HAProxy, every agent, server and etcd, and (by default) delete the lab's files."""
        live_labs.discard(self)
        if self.haproxy is not None:
            self.haproxy.stop()
        for member in self.members:
            with suppress(LabError):
                member.kill()
        if self.etcd is not None:
            self.etcd.stop()
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)


def load_lab(root: Path | str) -> Lab:
    """Attach to whichever kind of lab lives in ``root``."""
    from .cluster import Cluster

    mode = read_state(Path(root)).get("mode", "plain")
    loaders: dict[str, Callable[[Path | str], Lab]] = {
        "plain": Cluster.load,
        "patroni": PatroniCluster.load,
    }
    if mode not in loaders:
        raise LabError(f"unknown kind of lab in {root}: {mode!r}")
    return loaders[mode](root)
