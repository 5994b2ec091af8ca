"""read_your_writes against real replication lag: standbys made to lag on purpose.

Replay is paused on the standbys (``pg_wal_replay_pause()``: they still receive
the WAL, they apply none of it), so a standby read right after a write cannot
see it. Each test shows the stale read through a plain replica alias first (a
control: without it the other assertions prove nothing), then what
``read_your_writes`` changes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import OperationalError, connections, transaction
from django.http import HttpResponse
from django.test import RequestFactory

from django_pg_failover import causal
from django_pg_failover.causal.routing import counts
from django_pg_failover.connecting.memory import HostState, host_status
from django_pg_failover.drivers import get_driver
from django_pg_failover.lab import Cluster
from django_pg_failover.middleware import ReadYourWritesMiddleware
from shop.models import Order
from tests.conftest import FAST
from tests.markers import needs_pool

from .units import create

pytestmark = pytest.mark.timeout(120)


POOL = {"pool": {"min_size": 1, "max_size": 2}}


@pytest.fixture
def pool() -> dict:
    """No pool; the tests parametrised with ``POOL`` run with Django's pool too."""
    return {}


@pytest.fixture
def aliases(make_alias, pool: dict) -> dict[str, str]:
    """``primary``; ``replica`` (standbys only) reading for it; ``plain``: the same without."""
    primary = make_alias(OPTIONS={**pool})
    failover = {**FAST["failover"], "read_your_writes": primary, "read_your_writes_wait": 0.05}
    replica = make_alias(OPTIONS={"target_session_attrs": "standby", "failover": failover, **pool})
    plain = make_alias(OPTIONS={"target_session_attrs": "standby", **pool})
    return {"primary": primary, "replica": replica, "plain": plain}


@pytest.fixture(autouse=True)
def fresh_scope() -> Iterator[None]:
    causal.new_scope()  # the test thread serves no request: nothing renews it
    yield
    causal.new_scope()


@pytest.fixture
def lagging(cluster: Cluster) -> Iterator[Cluster]:
    """Standbys that receive the WAL and replay none of it, until the test ends."""
    for node in cluster.standbys:
        node.scalar("SELECT pg_wal_replay_pause()")
    try:
        yield cluster
    finally:
        for node in cluster.running_standbys:
            node.scalar("SELECT pg_wal_replay_resume()")


def sees(alias: str, key: str) -> bool:
    return Order.objects.using(alias).filter(key=key).exists()


def in_recovery(alias: str) -> bool:
    with connections[alias].connection.cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        return bool(cursor.fetchone()[0])


@pytest.mark.parametrize(
    "pool", [pytest.param({}, id="no-pool"), pytest.param(POOL, id="pool", marks=needs_pool)]
)
def test_a_read_after_a_write_sees_it_and_a_fresh_scope_reads_the_standby(
    lagging: Cluster, aliases: dict[str, str]
) -> None:
    key = create(aliases["primary"])
    assert not sees(aliases["plain"], key)  # the control: the standby is stale
    before = counts.primary
    assert sees(aliases["replica"], key)
    assert counts.primary == before + 1  # served by the primary
    assert in_recovery(aliases["replica"])  # the alias itself stays on its standby
    causal.new_scope()  # the next request, without the middleware
    assert not sees(aliases["replica"], key)  # no write in scope: the standby, as before
    assert counts.primary == before + 1


def test_a_read_sent_to_the_primary_that_loses_it_charges_the_primary_not_the_standby(
    lagging: Cluster, aliases: dict[str, str]
) -> None:
    primary, replica = connections[aliases["primary"]], connections[aliases["replica"]]
    key = create(aliases["primary"])
    assert sees(aliases["replica"], key)  # the position taken; the read went to the primary
    standby = replica.server
    pid = get_driver().backend_pid(primary.connection)
    lagging.primary.scalar(f"SELECT pg_terminate_backend({pid})")
    with pytest.raises(OperationalError):
        sees(aliases["replica"], key)  # the stand-in runs on the primary's lost session
    # The primary alias lost its connection; the replica alias kept its own, and its
    # standby is not taken for down (it was never asked anything).
    assert primary.connection is None
    assert in_recovery(aliases["replica"])
    assert replica.server == standby
    assert host_status.state(standby) is not HostState.DOWN
    assert sees(aliases["replica"], key)  # the next read: the primary, on a new connection


def test_a_committed_transaction_is_seen_and_standbys_serve_again_once_replayed(
    lagging: Cluster, aliases: dict[str, str]
) -> None:
    with transaction.atomic(using=aliases["primary"]):
        key = create(aliases["primary"])
        other = create(aliases["primary"])
    assert not sees(aliases["plain"], key)
    assert sees(aliases["replica"], key)
    assert sees(aliases["replica"], other)
    for node in lagging.standbys:
        node.scalar("SELECT pg_wal_replay_resume()")
    lagging.wait_replayed()
    before = (counts.primary, counts.standby_asked, counts.standby_known)
    assert sees(aliases["replica"], key)
    assert sees(aliases["replica"], other)
    # Asked once, then known: neither read went to the primary.
    assert (counts.primary, counts.standby_asked, counts.standby_known) == (
        before[0],
        before[1] + 1,
        before[2] + 1,
    )


def test_the_middleware_carries_the_position_to_the_next_request(
    lagging: Cluster, aliases: dict[str, str]
) -> None:
    factory = RequestFactory()
    written: list[str] = []

    def write_view(request) -> HttpResponse:
        written.append(create(aliases["primary"]))
        return HttpResponse("saved")

    def read_view(request) -> HttpResponse:
        return HttpResponse("yes" if sees(aliases["replica"], written[0]) else "no")

    response = ReadYourWritesMiddleware(write_view)(factory.post("/save"))
    cookie = response.cookies[ReadYourWritesMiddleware.cookie_name]
    assert "@" in str(cookie.value)  # signed, but readable: alias@X/Y:timestamp:signature

    def next_request(value: str | None) -> str:
        causal.new_scope()  # what request_started does
        request = factory.get("/")
        if value is not None:
            request.COOKIES[ReadYourWritesMiddleware.cookie_name] = value
        return ReadYourWritesMiddleware(read_view)(request).content.decode()

    assert next_request(None) == "no"  # the control: a request without the cookie
    assert next_request(cookie.value) == "yes"
    forged = cookie.value.replace(cookie.value.split(":")[0], "x" + cookie.value.split(":")[0])
    assert next_request(forged) == "no"  # altered: ignored
    unsigned = causal.lsn.encode({aliases["primary"]: (1, 2**40)})
    assert next_request(unsigned) == "no"  # a position without a signature: ignored
    assert next_request(cookie.value) == "yes"
    # A request that did not write leaves the cookie alone.
    causal.new_scope()
    reread = ReadYourWritesMiddleware(read_view)(factory.get("/"))
    assert ReadYourWritesMiddleware.cookie_name not in reread.cookies


def test_a_position_survives_a_failover_of_the_primary(
    cluster: Cluster, aliases: dict[str, str]
) -> None:
    first = create(aliases["primary"])
    assert sees(aliases["replica"], first)
    token = causal.position()
    old_position = causal.lsn.decode(token)[aliases["primary"]]
    old_timeline = cluster.primary.timeline()
    cluster.wait_replayed()

    cluster.failover()  # crash the primary, promote a standby, the other follows it
    connections.close_all()
    assert cluster.primary.timeline() > old_timeline
    (standby,) = cluster.running_standbys
    standby.scalar("SELECT pg_wal_replay_pause()")
    try:
        causal.new_scope()
        second = create(aliases["primary"])  # on the new primary, the new timeline
        assert not sees(aliases["plain"], second)  # the control
        assert sees(aliases["replica"], second)
        new_position = causal.lsn.decode(causal.position())[aliases["primary"]]
        assert old_position[0] == old_timeline
        assert new_position[0] == cluster.primary.timeline() > old_timeline
        assert new_position[1] > old_position[1]
        # The old timeline's position, carried to a new scope: the standby on the
        # new timeline replayed it before pausing, so it serves the read itself.
        before = counts.primary
        with causal.scope(token):
            assert sees(aliases["replica"], first)
        assert counts.primary == before
        assert in_recovery(aliases["replica"])
    finally:
        standby.scalar("SELECT pg_wal_replay_resume()")


def test_aliases_without_the_feature_keep_their_cursors(aliases: dict[str, str]) -> None:
    from django.db.backends.utils import CursorWrapper

    plain = connections[aliases["plain"]]
    with plain.cursor() as cursor:
        assert type(cursor) is CursorWrapper
    assert plain.causal_role is None
    assert connections[aliases["primary"]].cursor().__class__.__name__ == "WriteCursor"


def test_a_standby_that_disappears_never_serves_a_stale_read(
    lagging: Cluster, make_alias, aliases: dict[str, str]
) -> None:
    """retry_reads re-runs the read lost with its standby; on the next standby, behind
    too, the primary serves it."""
    failover = {**FAST["failover"], "read_your_writes": aliases["primary"], "retry_reads": True}
    replica = make_alias(OPTIONS={"target_session_attrs": "standby", "failover": failover})
    key = create(aliases["primary"])
    assert not sees(aliases["plain"], key)  # the control
    assert sees(replica, key)
    first = connections[replica].server
    (node,) = [n for n in lagging.standbys if n.port == first.port]
    lagging.crash(node)
    before = counts.primary
    assert sees(replica, key)  # re-run on the other standby, served by the primary
    assert connections[replica].server != first
    assert in_recovery(replica)
    assert counts.primary == before + 1


def test_what_one_connection_learns_of_a_standby_serves_the_others(
    cluster: Cluster, make_alias, aliases: dict[str, str]
) -> None:
    node = cluster.standbys[0]
    failover = {**FAST["failover"], "read_your_writes": aliases["primary"]}
    one, other = (
        make_alias(
            HOST=[f"127.0.0.1:{node.port}"],
            OPTIONS={"target_session_attrs": "standby", "failover": failover},
        )
        for _ in range(2)
    )
    create(aliases["primary"])
    cluster.wait_replayed()
    Order.objects.using(one).exists()  # each connection learns its server once
    Order.objects.using(other).exists()
    key = create(aliases["primary"])
    cluster.wait_replayed()
    asked, known = counts.standby_asked, counts.standby_known
    assert sees(one, key)  # asks its server: replayed
    assert sees(other, key)  # the same server: known, not asked
    assert (counts.standby_asked, counts.standby_known) == (asked + 1, known + 1)


def test_a_replica_alias_on_the_primary_itself_serves_the_read(
    lagging: Cluster, make_alias, aliases: dict[str, str]
) -> None:
    """prefer-standby with no standby listed lands on the primary: nothing to redirect."""
    failover = {**FAST["failover"], "read_your_writes": aliases["primary"]}
    replica = make_alias(
        HOST=[f"127.0.0.1:{lagging.primary.port}"],
        OPTIONS={"target_session_attrs": "prefer-standby", "failover": failover},
    )
    key = create(aliases["primary"])
    before = counts.primary
    assert sees(replica, key)
    assert not in_recovery(replica)
    assert counts.primary == before  # its own connection served it
    assert connections[replica].causal_replayed > (0, 0)  # known now: no more questions


def test_a_replica_alias_added_later_makes_its_primary_mark_writes(
    lagging: Cluster, make_alias
) -> None:
    primary = make_alias()
    create(primary)  # connected before any alias named it: it marks nothing
    assert connections[primary].causal_role is None
    failover = {**FAST["failover"], "read_your_writes": primary}
    replica = make_alias(OPTIONS={"target_session_attrs": "standby", "failover": failover})
    connections[replica].ensure_connection()
    assert connections[primary].causal_role == "write"
    key = create(primary)
    assert sees(replica, key)


def test_an_iterator_read_runs_on_the_primary_when_the_standby_is_behind(
    lagging: Cluster, aliases: dict[str, str]
) -> None:
    """QuerySet.iterator() (a server-side cursor on the replica alias's connection)."""
    keys = [create(aliases["primary"]) for _ in range(3)]
    query = Order.objects.filter(key__in=keys).values_list("key", flat=True)
    assert list(query.using(aliases["plain"]).iterator(chunk_size=2)) == []  # the control
    before = counts.primary
    assert sorted(query.using(aliases["replica"]).iterator(chunk_size=2)) == sorted(keys)
    assert counts.primary == before + 1
    assert list(query.using(aliases["replica"]).filter(key="none")) == []  # and on it goes


def test_the_testproject_recipe_reads_its_clients_writes(lagging: Cluster) -> None:
    """testproject with DJANGO_DB_REPLICA=1: the router, the replica alias, the middleware,
    through Django's request handling (request_started included), in a process of its own."""
    from tests.backend.test_django_commands import project_env, run

    code = (
        "import json, uuid\n"
        "from django.test import Client\n"
        "client, stranger = Client(), Client()\n"
        "key = uuid.uuid4().hex\n"
        "made = client.post('/orders/', json.dumps({'key': key}), 'application/json')\n"
        "assert made.status_code == 201, made.content\n"
        "print(client.get(f'/orders/{key}/').status_code,"
        " stranger.get(f'/orders/{key}/').status_code)\n"
    )
    env = project_env(lagging, DJANGO_DB_REPLICA="1")
    result = run(["manage.py", "shell", "-c", code], env)
    assert result.returncode == 0, result.stderr
    # The writer's next request sees its order; another client, reading from the
    # lagging standby like any plain replica alias, does not (the control).
    assert result.stdout.split()[-2:] == ["200", "404"]
    check = run(["manage.py", "check"], env)
    assert check.returncode == 0, check.stderr


def test_a_standby_that_diverged_from_the_new_primary_does_not_serve_its_positions(
    cluster: Cluster, make_alias
) -> None:
    """LSNs alone are timeline-blind: a standby left on the old timeline beyond the
    switch point shows a replay LSN past the new primary's first writes without them."""
    old, promoted, diverged = cluster.primary, *cluster.standbys
    promoted.scalar("ALTER SYSTEM SET primary_conninfo = ''")
    promoted.scalar("SELECT pg_reload_conf()")  # it receives nothing more
    old.scalar(
        "INSERT INTO shop_order (key, amount, created_at) SELECT 'old-' || g, 0, now() "
        "FROM generate_series(1, 20000) g",
        dbname="app",
    )
    target = old.wal_position()
    cluster.wait_replayed([diverged])
    assert promoted.replay_position() < target
    cluster.crash(old)
    cluster.promote(promoted)  # timeline 2 from where it stopped; diverged stays on 1

    primary = make_alias()
    failover = {**FAST["failover"], "read_your_writes": primary}
    on_diverged = [f"127.0.0.1:{diverged.port}"]
    replica = make_alias(
        HOST=on_diverged, OPTIONS={"target_session_attrs": "standby", "failover": failover}
    )
    plain = make_alias(HOST=on_diverged, OPTIONS={"target_session_attrs": "standby"})
    key = create(primary)
    timeline, lsn = causal.lsn.decode(causal.position())[primary]
    assert timeline == 2
    assert lsn < diverged.replay_position()  # by LSN alone the standby would serve it
    assert not sees(plain, key)  # the control: it does not have the write
    before = counts.primary
    assert sees(replica, key)
    assert counts.primary == before + 1


def test_writes_whose_primary_is_down_at_the_end_are_carried_as_pending(
    cluster: Cluster, make_alias
) -> None:
    """The middleware's token when the primary cannot be asked (a failover under way):
    the next scope asks the new primary, whose position covers the surviving write."""
    old, promoted, lagging = cluster.primary, *cluster.standbys
    primary = make_alias(OPTIONS={"failover": {**FAST["failover"], "retry_timeout": 0.5}})
    failover = {**FAST["failover"], "read_your_writes": primary}
    replica = make_alias(
        HOST=[f"127.0.0.1:{lagging.port}"],
        OPTIONS={"target_session_attrs": "standby", "failover": failover},
    )
    lagging.scalar("SELECT pg_wal_replay_pause()")
    key = create(primary)
    cluster.wait_replayed([promoted])
    cluster.crash(old)
    token = causal.carried()  # no primary to ask: no error either
    assert token == f"{primary}@pending"
    cluster.promote(promoted)  # the lagging standby, paused, is left behind (no follow)
    connections[primary].close()
    causal.new_scope()
    assert not sees(replica, key)  # the control: the lagging standby lacks it
    causal.new_scope()
    causal.resume(token)
    assert sees(replica, key)  # the new primary's position, asked now, covers it
