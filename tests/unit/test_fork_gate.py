"""fork() waits for the connects in flight: a child never inherits a lock held mid-connect."""

from __future__ import annotations

import os
import threading
import time

import pytest

from django_pg_failover.background import ForkGate, fork_gate

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")


def fork_and_reap() -> float:
    """Fork a child that exits at once; when the fork returned (monotonic)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    returned = time.monotonic()
    os.waitpid(pid, 0)
    return returned


def hold(gate: ForkGate, entered: threading.Event, seconds: float) -> threading.Thread:
    def connect() -> None:
        with gate.inside():
            entered.set()
            time.sleep(seconds)  # a driver's connect, in C, holding its locks

    thread = threading.Thread(target=connect)
    thread.start()
    assert entered.wait(5)
    return thread


# Python 3.12+ warns about forking a threaded process: that is what is tested here.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_waits_until_no_connect_is_inside_the_driver() -> None:
    entered = threading.Event()
    thread = hold(fork_gate, entered, 0.3)
    began = time.monotonic()
    returned = fork_and_reap()
    left = time.monotonic()
    thread.join()
    assert returned - began >= 0.25  # without the gate: at once
    assert left - began < 5


def test_fork_goes_ahead_after_the_wait_when_a_connect_hangs() -> None:
    gate = ForkGate(wait=0.2)
    entered = threading.Event()
    thread = hold(gate, entered, 1.0)
    began = time.monotonic()
    gate.before_fork()
    waited = time.monotonic() - began
    gate.after_fork_in_parent()
    thread.join()
    assert 0.15 <= waited < 0.9


def test_a_connect_waits_for_a_fork_under_way_and_then_runs() -> None:
    gate = ForkGate()
    gate.before_fork()  # nobody inside: returns at once, the fork is "under way"
    ran = threading.Event()

    def connect() -> None:
        with gate.inside():
            ran.set()

    thread = threading.Thread(target=connect)
    thread.start()
    assert not ran.wait(0.2)  # held off while the fork is under way
    gate.after_fork_in_parent()
    assert ran.wait(5)
    thread.join()
