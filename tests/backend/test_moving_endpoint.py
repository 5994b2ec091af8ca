"""HOST is one address that moves to the new primary: a virtual IP, a DNS name, a proxy.

The lab's :class:`~django_pg_failover.lab.Relay` stands in for that address:
it forwards new connections to one server and is moved (``retarget``) the way
a virtual IP manager, a DNS update or a proxy's health check moves theirs,
a moment after the cluster changed. Meanwhile the address leads to a server
that is down, or to the old primary come back as a standby. The backend
judges whatever answers there itself, waits through it as it does with a host
list (``retry_timeout``), and follows the address when it moves.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import Error, connections

from django_pg_failover.lab import Cluster, Relay
from django_pg_failover.lab.system import wait_for
from tests.load import RequestLoop, acknowledged_keys, report, running, wait_for_writes
from tests.markers import needs_pool

from .units import create, keys_on

pytestmark = pytest.mark.timeout(120)


def server_port(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT inet_server_port()")
        return cursor.fetchone()[0]


def takes_writes(node) -> bool:
    try:
        return node.is_in_recovery() is False
    except Exception:  # down, or shutting down
        return False


def held_sessions(node) -> int:
    """The app user's sessions on ``node`` open for over 0.1 s: a connection the
    backend holds there (a refused attempt closes its own at once)."""
    return node.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
        "AND backend_start < now() - interval '0.1 s'"
    )


def pool_available() -> bool:
    return not needs_pool.args[0]


def test_writes_wait_for_an_address_that_moves_after_the_switchover(
    cluster: Cluster, make_alias
) -> None:
    """A switchover; the address moves only once the old primary is back as a standby.

    Until then the address leads to no server, then to a standby: waiting
    connections must not settle on that standby (it will never be promoted),
    but follow the address when it moves. Bound: no unit that started after
    the old primary stopped fails on this backend, on fresh, persistent or
    pooled connections; at most one in flight at the stop, per loop; the
    first write through the moved address within 2 s of the move.
    """
    old = cluster.primary
    with Relay(old.port) as relay, ThreadPoolExecutor(1) as pool:
        endpoint = {"HOST": [f"127.0.0.1:{relay.port}"]}
        aliases = {
            "ours": make_alias(**endpoint),
            "ours persistent": make_alias(**endpoint, CONN_MAX_AGE=600, CONN_HEALTH_CHECKS=True),
            "stock": make_alias(stock=True, HOST="127.0.0.1", PORT=str(relay.port)),
        }
        if pool_available():
            pool_options = {"pool": {"min_size": 2, "max_size": 2}}
            aliases["ours pool"] = make_alias(**endpoint, OPTIONS=pool_options)
        loops = [
            RequestLoop(alias, label, threading.Event(), behind_proxy=True)
            for label, alias in aliases.items()
        ]
        with running(loops):
            wait_for_writes(loops, since=0)
            switched = pool.submit(cluster.switchover)
            wait_for(lambda: not takes_writes(old), 30, "the old primary to stop", 0.005)
            fault_at = time.monotonic()
            new = switched.result(60)
            # The old primary streams from the new one; the address still leads to
            # it until the waiting connections' search holds a connection there.
            wait_for(lambda: held_sessions(old) > 0, 20, "a connection held on the old primary")
            relay.retarget(new.port)
            moved_at = time.monotonic()
            wait_for_writes(loops, since=moved_at, port=new.port)
    first_write = {
        loop.label: round(loop.first_write_after(moved_at, new.port) - moved_at, 3)
        for loop in loops
    }
    report(
        f"switchover {old.name} -> {new.name}, then the address moved",
        loops,
        fault_at,
        address_moved_after=f"{moved_at - fault_at:.2f}s",
        first_write_after_the_move=first_write,
    )

    for loop in loops:
        if loop.label.startswith("ours"):
            assert loop.failed_after(fault_at) == [], loop.label
            assert len(loop.failed_in_flight(fault_at)) <= 1, loop.label
            # Followed within about backoff_max (0.25 s), not at retry_timeout (15 s).
            assert first_write[loop.label] < 2.0, loop.label
    assert loops[2].failed_after(fault_at), "the stock backend felt no fault"
    acknowledged = acknowledged_keys(loops)
    assert sorted(keys_on(new, acknowledged)) == sorted(acknowledged)
    assert all(loop.duplicates == 0 for loop in loops)


@pytest.mark.parametrize("kind", ["persistent", "pool"])
def test_a_session_open_on_a_demoted_server_is_dropped_at_its_first_read_only_error(
    cluster: Cluster, make_alias, kind: str
) -> None:
    """The old primary is fenced read-only (demoted without a restart: its sessions stay
    open) and the address moves to the promoted standby. The session kept open there
    fails one write, with the server's own error (25006), and is dropped: the next
    write goes through the address to the new primary."""
    if kind == "pool" and not pool_available():
        pytest.skip(needs_pool.kwargs["reason"])
    old = cluster.primary
    with Relay(old.port) as relay:
        settings = {"HOST": [f"127.0.0.1:{relay.port}"]}
        if kind == "pool":
            settings["OPTIONS"] = {"pool": {"min_size": 1, "max_size": 1}}
        else:
            settings.update(CONN_MAX_AGE=600, CONN_HEALTH_CHECKS=True)
        alias = make_alias(**settings)
        create(alias, "before")
        assert server_port(alias) == old.port
        cluster.wait_replayed()
        cluster.make_read_only(old)
        new = cluster.promote()
        relay.retarget(new.port)
        with pytest.raises(Error) as excinfo:
            create(alias, "refused")
        assert connections[alias].driver.sqlstate(excinfo.value.__cause__) == "25006"
        create(alias, "after")
        assert server_port(alias) == new.port
    assert keys_on(new, ["before", "refused", "after"]) == ["before", "after"]
