"""fork() after connecting (gunicorn ``--preload``): each child opens its own connections,
and the parent's sessions outlive whatever the children do (use, close, exit)."""

from __future__ import annotations

import faulthandler
import gc
import json
import os
import select
import signal
import socket
import stat
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import pytest
from django.db import Error, connections, transaction

from django_pg_failover.lab import Cluster
from tests.markers import needs_pool

from .units import create, keys_on

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()"),
    # Python 3.12+ warns about forking a threaded process (a pool's workers, the
    # backend's): that is what gunicorn --preload does, and these tests do.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]

CHILDREN = 3
ROUNDS = 200
#: How long a child may take before it is killed (its traceback reported).
CHILD_SECONDS = 15


def fork_children(count: int, body: Callable[[], Any]) -> list[Any]:
    """Fork ``count`` children that run ``body()`` at the same moment; what each returned.

    A child that raises reports the error; one that does not finish in
    CHILD_SECONDS reports where it was stuck and is killed. The parent waits a
    bounded time for all of them.
    """
    go_reader, go_writer = os.pipe()
    children = []
    for _ in range(count):
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(reader)
            os.close(go_writer)
            report = "did not finish"
            try:
                # Killed by the kernel, even while blocked in C (psycopg2 waits there).
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                faulthandler.dump_traceback_later(CHILD_SECONDS - 1, file=writer)
                signal.alarm(CHILD_SECONDS)
                os.read(go_reader, 1)  # returns when the parent closes its end: all start
                report = json.dumps(body())
                faulthandler.cancel_dump_traceback_later()
            except BaseException as exc:
                report = f"{type(exc).__name__}: {exc}"
            finally:
                os.write(writer, report.encode())
                os._exit(0)
        os.close(writer)
        children.append((pid, reader))
    os.close(go_reader)
    os.close(go_writer)
    said: dict[int, bytes] = {reader: b"" for _, reader in children}
    open_readers = set(said)
    deadline = time.monotonic() + CHILD_SECONDS + 5
    while open_readers and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select(list(open_readers), [], [], left)
        for reader in ready:
            chunk = os.read(reader, 65536)
            if chunk:
                said[reader] += chunk
            else:
                open_readers.discard(reader)
    outcomes = []
    for pid, reader in children:
        if reader in open_readers:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(reader)
        text = said[reader].decode(errors="replace")
        try:
            outcomes.append(json.loads(text))
        except ValueError:
            outcomes.append(text or "killed")
    return outcomes


def backend_pid(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def sessions(cluster: Cluster, application_name: str) -> set[int]:
    rows = cluster.primary.query(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [application_name]
    )
    return {row[0] for row in rows}


def sockets_to(port: int) -> list[int]:
    """This process's sockets connected to a server's port, by inode (Linux's /proc)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        with suppress(OSError):
            status = os.fstat(int(name))
            if stat.S_ISSOCK(status.st_mode):
                with socket.socket(fileno=os.dup(int(name))) as sock:  # closes the copy only
                    peer = sock.getpeername()
                if isinstance(peer, tuple) and peer[1] == port:
                    found.append(status.st_ino)
    return found


def queries(alias: str, close_all_first: bool) -> dict:
    """A child's work: queries whose answers name the child, on the session it gets."""
    if close_all_first:
        connections.close_all()  # what many post-fork hooks do
    me = os.getpid()
    backends = set()
    wrong = []
    for number in range(ROUNDS):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid(), %s::int, %s::int", [me, number])
            backend, pid, echoed = cursor.fetchone()
        backends.add(backend)
        if (pid, echoed) != (me, number):
            wrong.append([pid, echoed])
    gc.collect()  # what the child let go of is collected: nothing may reach the server
    port = connections[alias].connection.info.port
    return {"backends": sorted(backends), "wrong": wrong[:5], "sockets": sockets_to(int(port))}


@pytest.mark.parametrize("close_all_first", [False, True], ids=["use", "close_all"])
@pytest.mark.parametrize(
    "pooled",
    [False, pytest.param(True, marks=needs_pool)],
    ids=["no_pool", "pool"],
)
def test_children_forked_after_connecting_get_their_own_sessions(
    cluster: Cluster, make_alias, pooled: bool, close_all_first: bool
) -> None:
    application_name = f"fork-{uuid.uuid4().hex[:12]}"
    options: dict[str, Any] = {"application_name": application_name}
    if pooled:
        options["pool"] = {"min_size": 2, "max_size": 4}
    alias = make_alias(OPTIONS=options)
    wrapper = connections[alias]
    parent_backend = backend_pid(alias)
    if pooled:
        wrapper.pool.wait(timeout=10)  # idle connections in the pool as well
    parent_sessions = sessions(cluster, application_name)
    assert parent_backend in parent_sessions
    assert len(parent_sessions) == (3 if pooled else 1)  # checked out + min_size idle
    parent_connection = wrapper.connection
    parent_sockets = set(sockets_to(cluster.primary.port))
    assert len(parent_sockets) >= len(parent_sessions)

    outcomes = fork_children(CHILDREN, lambda: queries(alias, close_all_first))

    for outcome in outcomes:
        assert isinstance(outcome, dict), outcome
        assert outcome["wrong"] == [], outcome  # no answer meant for another process
        assert len(outcome["backends"]) == 1, outcome  # one session all along
    child_backends = [outcome["backends"][0] for outcome in outcomes]
    assert len(set(child_backends)) == CHILDREN  # a session each
    assert not set(child_backends) & parent_sessions  # none of the parent's
    for outcome in outcomes:  # nor do the children hold the parent's sockets open
        assert not set(outcome["sockets"]) & parent_sockets
    # The parent's sessions outlived the children: same connection, same session.
    assert wrapper.connection is parent_connection
    assert backend_pid(alias) == parent_backend
    assert parent_sessions <= sessions(cluster, application_name)


def test_a_child_forked_inside_an_atomic_block_cannot_write_into_the_parents_transaction(
    cluster: Cluster, make_alias
) -> None:
    alias = make_alias()
    parent_key, child_key = uuid.uuid4().hex, uuid.uuid4().hex

    def write() -> str:
        try:
            create(alias, child_key)
        except Error as exc:
            return f"{type(exc).__name__}: {exc}"
        return "written"

    with transaction.atomic(using=alias):
        create(alias, parent_key)
        [outcome] = fork_children(1, write)
    assert outcome == "ProgrammingError: Cannot open a new connection in an atomic block."
    assert keys_on(cluster.primary, [parent_key, child_key]) == [parent_key]
