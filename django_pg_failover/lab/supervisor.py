"""Runs one Patroni agent the way init would, so that nothing of a lab node outlives the lab.

    python supervisor.py PARENT_PID -- python -m patroni config.yml

Patroni starts PostgreSQL through an intermediate process that exits at once,
leaving the postmaster to be adopted and reaped by init. Here this process is
that init (a child subreaper): it reaps the postmaster and whatever Patroni
leaves behind, and when the lab that started it dies (``PARENT_PID``; 0 for a
lab left running by the command line) or asks it to stop (SIGTERM), it kills
the agent, PostgreSQL and every other descendant.

The lab copies this file next to its nodes and runs it as the server user with
the interpreter that runs Patroni: it imports nothing but the standard library.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from contextlib import suppress

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
IPC_RMID = 0


def children() -> dict[int, list[int]]:
    """Each live process's children, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    parent = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(parent, []).append(int(entry))
    return tree


#: Every process this supervisor killed (a postmaster's shared memory is removed after it).
killed: set[int] = set()


def kill_descendants() -> None:
    """Stop every descendant (so none forks meanwhile), then SIGKILL them all."""
    tree = children()
    found: list[int] = []
    pending = list(tree.get(os.getpid(), []))
    while pending:
        pid = pending.pop()
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            continue
        found.append(pid)
        pending.extend(tree.get(pid, []))
    for pid in found:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    killed.update(found)


def remove_shared_memory(libc: ctypes.CDLL) -> None:
    """Remove the System V segments a killed postmaster created and nobody uses now.

    The lab's own ``system.remove_shared_memory`` does this for one known
    segment; this file may import nothing of the package (see above).
    """
    try:
        with open("/proc/sysvipc/shm") as f:
            header, *rows = f.read().splitlines()
    except OSError:
        return
    columns = header.split()
    for row in rows:
        fields = dict(zip(columns, row.split(), strict=False))
        if int(fields["cpid"]) in killed and fields["nattch"] == "0":
            libc.shmctl(ctypes.c_int(int(fields["shmid"])), ctypes.c_int(IPC_RMID), None)


def main(argv: list[str]) -> int:
    parent, command = int(argv[1]), argv[3:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def stop(signum: int, frame: object) -> None:
        kill_descendants()  # then the loop below reaps them and returns

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    if parent:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the lab died before the line above
            return 1
    subprocess.Popen(command, stdin=subprocess.DEVNULL)
    # Reap until nothing is left. When Patroni alone dies, its PostgreSQL stays
    # up, as it would on a real machine, until the lab kills it too.
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            remove_shared_memory(libc)
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
