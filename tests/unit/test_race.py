"""One pass over the hosts (:mod:`django_pg_failover.connecting.race`), driven by fake attempts.

A fake attempt is a future the test completes: when, and with what, is the
test's choice, so the race's rules are checked without a server or a clock
beyond ``attempt_delay`` (tiny here: a silent host is overtaken at once).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest

from django_pg_failover.connecting.attempt import HostFailure, Landing, Outcome
from django_pg_failover.connecting.race import MAX_IN_FLIGHT, PassResult, Race
from django_pg_failover.connecting.roles import Role
from django_pg_failover.connecting.verdicts import Verdict
from django_pg_failover.settings.hosts import Host

A, B, C, D = (Host("10.0.0.1", 5432 + n) for n in range(4))
DELAY = 0.001


class Attempts:
    """Fake attempts: each started host gets a future; ``answer`` completes it now,
    ``script`` completes it as it starts."""

    def __init__(self, script: dict[Host, Outcome] | None = None) -> None:
        self.script = script or {}
        self.started: list[Host] = []
        self.futures: dict[Host, Future] = {}
        self.closed: list[object] = []
        self.marked_down: list[Host] = []

    def start(self, host: Host) -> Future:
        self.started.append(host)
        future: Future = Future()
        self.futures[host] = future
        if host in self.script:
            future.set_result(self.script[host])
        return future

    def answer(self, host: Host, outcome: Outcome) -> None:
        self.futures[host].set_result(outcome)

    def race(self, hosts: list[Host], target: str = "read-write", **kwargs) -> Race:
        return Race(
            hosts,
            target_session_attrs=target,
            attempt_delay=kwargs.pop("attempt_delay", DELAY),
            start=self.start,
            close=self.closed.append,
            mark_down=self.marked_down.append,
            **kwargs,
        )


def winner(result: PassResult) -> Host | None:
    return None if result.landing is None else result.landing.host


def landing(host: Host, role: Role | None = Role.PRIMARY) -> Landing:
    return Landing(connection=f"conn-{host.port}", host=host, role=role)


def refused(host: Host) -> HostFailure:
    return HostFailure(host, "password authentication failed", Verdict.REFUSED)


def no_answer(host: Host) -> HostFailure:
    return HostFailure(host, "Connection refused", Verdict.UNREACHABLE)


class FakeSearch:
    def __init__(self, under_way: Future | None = None) -> None:
        self.under_way = under_way
        self.joined = 0
        self.ended: list[tuple[bool, bool]] = []

    def join_search(self) -> Future | None:
        self.joined += 1
        return self.under_way

    def done_leading(self, found: bool, hopeless: bool = False) -> None:
        self.ended.append((found, hopeless))


def test_the_first_suitable_host_wins_and_the_rest_are_not_tried() -> None:
    attempts = Attempts({A: landing(A), B: landing(B)})
    result = attempts.race([A, B]).run()
    assert winner(result) == A
    assert attempts.started == [A]
    assert result.failures == []


def test_a_failure_starts_the_next_host_at_once() -> None:
    attempts = Attempts({A: no_answer(A), B: landing(B)})
    result = attempts.race([A, B], attempt_delay=60).run()  # never waits to overtake
    assert winner(result) == B
    assert [f.host for f in result.failures] == [A]


def test_a_server_of_the_wrong_role_is_closed_and_counted_as_a_failure() -> None:
    attempts = Attempts({A: landing(A, Role.STANDBY), B: landing(B)})
    result = attempts.race([A, B]).run()
    assert winner(result) == B
    assert attempts.closed == [f"conn-{A.port}"]
    assert [(f.host, f.reason, f.verdict) for f in result.failures] == [
        (A, "session is read-only", None)
    ]


def test_a_silent_host_is_overtaken_and_marked_down_when_another_wins() -> None:
    attempts = Attempts({B: landing(B)})  # A never answers
    result = attempts.race([A, B]).run()
    assert winner(result) == B
    assert attempts.started == [A, B]
    assert attempts.marked_down == [A]
    # A's attempt, still running, is closed when it ends.
    attempts.answer(A, landing(A))
    assert attempts.closed == [f"conn-{A.port}"]


def test_at_most_max_in_flight_attempts_run_at_once() -> None:
    attempts = Attempts({D: landing(D)})  # A, B, C stay silent
    in_flight_at_start: dict[Host, int] = {}
    start = attempts.start

    def counting_start(host: Host) -> Future:
        in_flight_at_start[host] = sum(not f.done() for f in attempts.futures.values())
        if host == C:  # the race is full now: A fails a moment later
            threading.Timer(0.05, attempts.answer, (A, no_answer(A))).start()
        return start(host)

    attempts.start = counting_start  # type: ignore[method-assign]
    result = attempts.race([A, B, C, D]).run()
    assert winner(result) == D
    assert attempts.started == [A, B, C, D]
    assert in_flight_at_start == {A: 0, B: 1, C: 2, D: MAX_IN_FLIGHT - 1}


def test_prefer_standby_keeps_a_primary_aside_until_no_standby_answers() -> None:
    attempts = Attempts({A: landing(A, Role.PRIMARY), B: no_answer(B)})
    result = attempts.race([A, B], target="prefer-standby").run()
    assert winner(result) == A
    assert attempts.closed == []


def test_prefer_standby_takes_a_standby_over_the_primary_kept_aside() -> None:
    attempts = Attempts({A: landing(A, Role.PRIMARY), B: landing(B, Role.STANDBY)})
    result = attempts.race([A, B], target="prefer-standby").run()
    assert winner(result) == B
    assert attempts.closed == [f"conn-{A.port}"]


def test_what_the_callers_own_attempt_found_counts_as_the_first() -> None:
    attempts = Attempts({B: landing(B)})
    result = attempts.race([A, B]).run(first=no_answer(A))
    assert attempts.started == [B]  # A is not tried again in this pass
    assert winner(result) == B
    assert [f.host for f in result.failures] == [A]


def test_going_past_the_first_host_joins_the_search_and_leads_it() -> None:
    search = FakeSearch()
    attempts = Attempts({A: no_answer(A), B: landing(B)})
    result = attempts.race([A, B], coordinator=lambda: search).run()
    assert search.joined == 1
    assert search.ended == [(True, False)]  # found: the followers connect now
    assert result.searching is None


def test_a_search_under_way_is_waited_for_not_joined_twice() -> None:
    under_way: Future = Future()
    search = FakeSearch(under_way)
    attempts = Attempts({A: no_answer(A)})
    under_way.set_result(None)  # that search ended (found a server)
    result = attempts.race([A, B], coordinator=lambda: search).run()
    assert attempts.started == [A]  # deferred: B is not tried by this thread
    assert result.deferred
    assert result.landing is None


def test_a_search_that_found_nothing_is_handed_on_and_hopeless_ones_end() -> None:
    search = FakeSearch()
    attempts = Attempts({A: no_answer(A), B: no_answer(B)})
    result = attempts.race([A, B], coordinator=lambda: search).run()
    assert result.searching is search  # the caller hands it over
    assert search.ended == []
    search = FakeSearch()
    attempts = Attempts({A: refused(A), B: refused(B)})
    result = attempts.race([A, B], coordinator=lambda: search).run()
    assert result.searching is None
    assert search.ended == [(False, True)]  # every host refused for good


def test_among_attempts_that_end_together_the_preferred_host_wins() -> None:
    attempts = Attempts()
    start = attempts.start

    def start_both_answer(host: Host) -> Future:
        future = start(host)
        if host == B:  # B overtook A; both answer before the race looks again
            attempts.answer(B, landing(B))
            attempts.answer(A, landing(A))
        return future

    attempts.start = start_both_answer  # type: ignore[method-assign]
    result = attempts.race([A, B]).run()
    assert winner(result) == A
    assert attempts.closed == [f"conn-{B.port}"]  # the loser's connection


@pytest.mark.parametrize("target", ["read-write", "any"])
def test_a_role_not_reported_is_taken_as_suitable(target: str) -> None:
    attempts = Attempts({A: landing(A, None)})
    result = attempts.race([A], target=target).run()
    assert winner(result) == A
