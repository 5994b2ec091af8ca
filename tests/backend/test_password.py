"""A password provider (``OPTIONS["failover"]["password"]``) against the lab's SCRAM logins.

The lab trusts its superuser and asks every other role for a SCRAM password
(``hba_lines()``): each test makes a role of its own, whose password it
rotates with ``ALTER ROLE`` on the primary (:mod:`.passwords`).
"""

from __future__ import annotations

import io
import json
import threading
import time
import traceback
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.db import OperationalError, connections

from django_pg_failover.lab import Cluster
from django_pg_failover.losing.stall import Finding, check_session
from tests.markers import needs_pool

from .passwords import STORE, create_role, drop_role, options
from .units import WriteLoop, in_request, keys_on, run_loops

pytestmark = pytest.mark.timeout(120)

POOL = {"min_size": 2, "max_size": 4}
pools = pytest.mark.parametrize("pool", [False, pytest.param(True, marks=needs_pool)])


@pytest.fixture
def role(cluster: Cluster) -> Iterator[str]:
    """A role of the test's own, its password in the store. Ask for it before ``make_alias``:
    the aliases go first, then the role."""
    name, password = create_role(cluster)
    STORE.reset(name, password)
    yield name
    STORE.reset()
    if not cluster.dirty:  # a reset throws it away anyway
        connections.close_all()
        drop_role(cluster, name)


def server_port(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT inet_server_port()")
        return cursor.fetchone()[0]


def pool_options(pool: bool, **sizes: int) -> dict:
    return {"pool": {**POOL, **sizes}} if pool else {}


@pools
def test_a_stale_password_is_retried_once_with_a_fresh_one(
    cluster: Cluster, role: str, make_alias, failover_log, pool: bool
) -> None:
    STORE.cached = "rotated-away"  # what the provider cached before a rotation
    primary = cluster.primary
    alias = make_alias(
        HOST=[f"127.0.0.1:{primary.port}"],
        USER=role,
        PASSWORD="",
        # One connection in the pool: its worker's connect is the one counted.
        OPTIONS={**options(), **pool_options(pool, min_size=1, max_size=1)},
    )
    assert in_request(lambda: server_port(alias)) == primary.port
    # Refused, asked again with refresh, connected.
    assert STORE.calls == [(primary.port, False), (primary.port, True)]
    refused = [
        r.getMessage() for r in failover_log.records if "refused the password" in r.getMessage()
    ]
    assert refused == [
        f"database alias {alias!r}: 127.0.0.1:{primary.port} refused the password from "
        f"'tests.backend.passwords.provider'; asking the provider for a new one"
    ]
    assert "rotated-away" not in failover_log.text
    assert STORE.current not in failover_log.text


def test_a_wrong_password_fails_after_exactly_one_retry_per_host(
    cluster: Cluster, role: str, make_alias, failover_log
) -> None:
    STORE.always = "not-the-password-0xW"
    alias = make_alias(USER=role, PASSWORD="", OPTIONS=options())
    started = time.monotonic()
    with pytest.raises(OperationalError) as caught:
        connections[alias].ensure_connection()
    assert time.monotonic() - started < 5  # final at once, as a wrong PASSWORD is
    text = "".join(traceback.format_exception(caught.value))
    assert "not retried: waiting will not fix it" in str(caught.value)
    for node in cluster.nodes:
        assert f"127.0.0.1:{node.port}: password authentication failed for user" in str(
            caught.value
        )
    assert sorted(STORE.calls) == sorted(
        (node.port, refresh) for node in cluster.nodes for refresh in (False, True)
    )
    for secret in (STORE.always, STORE.current):
        assert secret not in text
        assert secret not in failover_log.text


def test_the_provider_failing_names_alias_and_host_and_no_secret(
    cluster: Cluster, role: str, make_alias, failover_log
) -> None:
    STORE.fails = RuntimeError(f"vault is sealed (password={STORE.current})")
    primary = cluster.primary
    alias = make_alias(
        HOST=[f"127.0.0.1:{primary.port}"], USER=role, PASSWORD="", OPTIONS=options()
    )
    with pytest.raises(OperationalError) as caught:
        connections[alias].ensure_connection()
    assert str(caught.value).startswith(f"could not connect to database alias {alias!r}")
    assert (
        f"127.0.0.1:{primary.port}: the password provider 'tests.backend.passwords.provider' "
        "raised RuntimeError: vault is sealed (password=***)"
    ) in str(caught.value)
    assert STORE.calls == [(primary.port, False)]  # its failure is not the server's refusal
    assert STORE.current not in "".join(traceback.format_exception(caught.value))
    assert STORE.current not in failover_log.text


def test_every_connection_path_asks_the_provider_and_shows_no_secret(
    cluster: Cluster, role: str, make_alias, failover_log
) -> None:
    """The backend's connect, the stall check's session check and pg_hosts."""
    alias = make_alias(USER=role, PASSWORD="", OPTIONS=options())
    db = connections[alias]
    db.ensure_connection()
    assert STORE.calls == [(cluster.primary.port, False)]
    # The stall check finds the session: its own connection got in with the provider's password.
    finding, detail = check_session(db, db.server)
    assert (finding, detail) == (
        Finding.ALIVE,
        f"its session (process {db.server_session[0]}) is there",
    )
    assert len(STORE.calls) == 2
    stdout = io.StringIO()
    call_command("pg_hosts", "--database", alias, "--json", stdout=stdout)
    report = json.loads(stdout.getvalue())
    assert [host["reachable"] for host in report["hosts"]] == [True] * len(cluster.nodes)
    assert sorted(STORE.calls[2:]) == sorted((node.port, False) for node in cluster.nodes)
    shown = [stdout.getvalue(), repr(db), repr(db.failover_settings), repr(db.connector.password)]
    for text in shown:
        assert STORE.current not in text
    assert STORE.current not in failover_log.text


@pools
def test_a_rotating_password_through_a_failover(
    cluster: Cluster, role: str, make_alias, pool: bool
) -> None:
    """Rotations under request cycles with writes, a crash and a promotion: nothing fails."""
    alias = make_alias(
        USER=role,
        PASSWORD="",
        OPTIONS={**options(backoff_max=0.1), **pool_options(pool)},
    )
    # Held by the fault while the cluster changes hands: the store rotates on a primary
    # whose standbys replay it (a password set on a primary that then dies unreplayed
    # is lost with it, the store's answer with it).
    changing_hands = threading.Lock()
    stop_rotating = threading.Event()
    rotated_at: list[float] = []

    def rotate() -> None:
        while not stop_rotating.wait(0.2):
            with changing_hands:
                try:
                    STORE.rotate(cluster)
                except Exception:  # the primary is down: no rotation meanwhile
                    continue
                rotated_at.append(time.monotonic())

    crashed_at: list[float] = []
    promoted_at: list[float] = []
    stop = threading.Event()
    loops = [WriteLoop(alias, crashed_at, stop, pause=0.02) for _ in range(3)]

    def fault() -> None:
        time.sleep(0.8)  # rotations under traffic
        with changing_hands:
            old = cluster.crash(cluster.primary)
            crashed_at.append(time.monotonic())
        time.sleep(1.0)
        with changing_hands:
            cluster.promote()
            cluster.follow([n for n in cluster.standbys if n is not old])
            promoted_at.append(time.monotonic())
        time.sleep(1.0)  # rotations on the new primary under traffic

    rotator = threading.Thread(target=rotate)
    rotator.start()
    try:
        run_loops(loops, fault)
    finally:
        stop_rotating.set()
        rotator.join(30)
    new = cluster.primary
    print(
        f"\nrotations: {len(rotated_at)}, provider calls: {len(STORE.calls)} "
        f"(refresh: {STORE.refreshes()}), writes: {sum(len(loop.acknowledged) for loop in loops)}"
    )
    assert [loop.failed_after_crash for loop in loops] == [0] * len(loops)
    assert all(loop.failed_in_flight <= 1 for loop in loops)  # a write the crash cut
    assert any(t < crashed_at[0] for t in rotated_at)
    assert any(t > promoted_at[0] for t in rotated_at)
    assert STORE.refreshes() >= 1  # stale passwords were refused, and healed
    assert all(loop.ports[-1] == new.port for loop in loops)
    after = [
        key
        for loop in loops
        for key, port in zip(loop.acknowledged, loop.ports, strict=True)
        if port == new.port
    ]
    assert after
    assert sorted(keys_on(new, after)) == sorted(after)
