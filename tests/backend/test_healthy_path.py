"""When nothing fails, the backend costs what Django's own backend costs: counted, not timed.

Calls are counted as cProfile counts them (``sys.setprofile``'s ``call`` and
``c_call`` events: every function and generator frame run in Python, and
every built-in called) for the same work done through this backend and
through Django's stock backend, on the same lab server, in the same process.
A count holds on a noisy machine where a timing would not. The budgets
(docs/comparison.rst, "The healthy path"):

- a query (``execute`` then ``fetchone`` on a Django cursor): at most one call
  more than stock; a client-side fetch alone: none more;
- with ``retry_reads`` on, at most :data:`RETRY_READS_BUDGET` more per query
  (the classification, a dictionary lookup once the text was seen);
- a connect and close to a first host that answers: at most
  :data:`CONNECT_BUDGET` more (the host memory, the role, the stall watch;
  libpq's connect and SCRAM cost a thousand times more CPU), and no work
  handed to another thread;
- a checkout and return of Django's pool: at most
  :data:`POOL_CHECKOUT_BUDGET` more (the look at the connection's socket
  that stock does not take, the stall watch, the session's record);
- nothing of the package's is left allocated by queries.
"""

from __future__ import annotations

import gc
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from django.db import connections

from django_pg_failover import background
from django_pg_failover.lab import Cluster
from tests.markers import needs_pool

pytestmark = pytest.mark.timeout(120)

QUERY_BUDGET = 1
FETCH_BUDGET = 0
RETRY_READS_BUDGET = 4
CONNECT_BUDGET = 75
POOL_CHECKOUT_BUDGET = 30
QUERIES = 500  # the memory test's queries


@contextmanager
def quiet_gc() -> Iterator[None]:
    """No collection (and no weakref callback it runs) in the middle of a count."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def python_calls(work: Callable[[], object], times: int = 50) -> float:
    """Calls (Python functions and built-ins) per run of ``work``, in this thread."""
    calls = 0

    def profile(frame, event, arg) -> None:
        nonlocal calls
        if event == "call" or event == "c_call":
            calls += 1

    work()  # caches warm, lazy imports done
    with quiet_gc():
        sys.setprofile(profile)
        try:
            for _ in range(times):
                work()
        finally:
            sys.setprofile(None)
    return calls / times


def query_work(alias: str) -> tuple[Callable[[], object], Callable[[], object]]:
    """A query (execute + fetchone) and a fetch alone, on a Django cursor of ``alias``."""
    cursor = connections[alias].cursor()
    cursor.execute("SELECT 1")

    def query() -> object:
        cursor.execute("SELECT %s", [1])
        return cursor.fetchone()

    def fetch() -> object:
        return cursor.fetchone()  # nothing left: None, read from the client's buffer

    return query, fetch


def connect_work(alias: str) -> Callable[[], None]:
    def connect_and_close() -> None:
        connection = connections[alias]
        connection.ensure_connection()
        connection.close()

    return connect_and_close


@pytest.fixture
def aliases(make_alias) -> dict[str, str]:
    return {
        "stock": make_alias(stock=True),
        "ours": make_alias(),
        "ours_reads": make_alias(OPTIONS={"failover": {"retry_reads": True}}),
    }


def test_a_query_costs_at_most_one_call_more_than_stock(aliases: dict[str, str]) -> None:
    counts = {side: query_work(alias) for side, alias in aliases.items()}
    query = {side: python_calls(work[0]) for side, work in counts.items()}
    fetch = {side: python_calls(work[1]) for side, work in counts.items()}
    print(f"calls per query {query}, per fetch {fetch}")  # the figures, with -s
    assert query["ours"] - query["stock"] <= QUERY_BUDGET, query
    assert fetch["ours"] - fetch["stock"] <= FETCH_BUDGET, fetch
    assert query["ours_reads"] - query["stock"] <= RETRY_READS_BUDGET, query
    assert fetch["ours_reads"] - fetch["stock"] <= FETCH_BUDGET, fetch


def test_queries_leave_nothing_of_ours_allocated(aliases: dict[str, str]) -> None:
    query, _ = query_work(aliases["ours_reads"])
    package = tracemalloc.Filter(True, "*django_pg_failover*")
    with quiet_gc():
        tracemalloc.start()
        try:
            query()  # what a query replaces (the start time of the last call) is traced too
            before = tracemalloc.take_snapshot().filter_traces([package])
            for _ in range(QUERIES):
                query()
            after = tracemalloc.take_snapshot().filter_traces([package])
        finally:
            tracemalloc.stop()
    # A line that allocates per query grows by hundreds of objects over 500 queries.
    # The stall watchdog's thread keeps its last look at the connections (a few small
    # dicts, replaced at each look, whatever the number of queries), and a snapshot
    # can fall on either side of a look: a handful of objects is not a query's.
    grown = [d for d in after.compare_to(before, "lineno") if d.count_diff >= QUERIES // 10]
    assert grown == []


def test_a_connect_costs_what_stock_costs_and_wakes_no_thread(aliases: dict[str, str]) -> None:
    works = {side: connect_work(aliases[side]) for side in ("stock", "ours")}
    for work in works.values():
        work()  # the host memory knows the primary; the stall watchdog runs
    threads, submitted = threading.active_count(), background.workers.submitted
    calls = {side: python_calls(work, times=20) for side, work in works.items()}
    print(f"calls per connect and close {calls}")
    assert calls["ours"] - calls["stock"] <= CONNECT_BUDGET, calls
    assert background.workers.submitted == submitted  # nothing handed to a worker
    assert threading.active_count() == threads  # and no thread started


@needs_pool
def test_a_pool_checkout_costs_what_stocks_costs(cluster: Cluster, make_alias) -> None:
    pool = {"pool": {"min_size": 1, "max_size": 2}}
    works = {
        "stock": connect_work(make_alias(stock=True, OPTIONS=pool)),
        "ours": connect_work(make_alias(OPTIONS=pool)),
    }
    calls = {side: python_calls(work, times=20) for side, work in works.items()}
    print(f"calls per checkout and return {calls}")
    assert calls["ours"] - calls["stock"] <= POOL_CHECKOUT_BUDGET, calls


#: read_your_writes: a statement on the primary alias of a pair marks the scope
#: (the override and a set's add); a read on the replica alias in a scope without
#: writes looks at the scope (the override).
RYW_WRITE_BUDGET = 3
RYW_READ_BUDGET = 2


def test_read_your_writes_costs_a_few_calls_on_its_two_aliases(make_alias) -> None:
    from django_pg_failover import causal
    from tests.conftest import FAST

    primary = make_alias()
    failover = {**FAST["failover"], "read_your_writes": primary}
    replica = make_alias(OPTIONS={"target_session_attrs": "prefer-standby", "failover": failover})
    works = {
        "stock": query_work(make_alias(stock=True))[0],
        "ours": query_work(make_alias())[0],
        "primary": query_work(primary)[0],
    }
    calls = {side: python_calls(work) for side, work in works.items()}
    causal.new_scope()  # the primary's queries marked it: a read scope starts clean
    read = query_work(replica)[0]
    calls["replica"] = python_calls(read)
    print(f"calls per query {calls}")
    assert calls["ours"] - calls["stock"] <= QUERY_BUDGET, calls
    assert calls["primary"] - calls["ours"] <= RYW_WRITE_BUDGET, calls
    assert calls["replica"] - calls["ours"] <= RYW_READ_BUDGET, calls
