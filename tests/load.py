"""Request-like units of work in threads, timed one by one, for failover tests.

Each unit writes one order between Django's request signals, the way its
handler runs a view, so that both backends drop a broken connection at the
end of a request as they would in production. Failures are Django's
``Error`` (``InterfaceError`` is not a ``DatabaseError``).

Behind one address (a proxy, a relay) the connection's own port is the
address's: such a loop asks the server which port it listens on, in the
write's own statement (one statement, as the ORM's insert).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.core.signals import request_finished, request_started
from django.db import Error, IntegrityError, connections

from django_pg_failover.lab.system import wait_for
from shop.models import Order

#: The ORM's insert of an order, returning the port of the server that ran it.
INSERT_RETURNING_PORT = (
    "INSERT INTO shop_order (key, amount, created_at) VALUES (%s, 0, now()) "
    "RETURNING inet_server_port()"
)


def in_request(work: Callable[[], Any]) -> Any:
    """Run ``work`` the way Django's handler runs a view: between the request signals."""
    request_started.send(sender=None)
    try:
        return work()
    finally:
        request_finished.send(sender=None)


@dataclass(frozen=True)
class Unit:
    started: float  # time.monotonic()
    ended: float
    key: str
    port: int | None  # the server that acknowledged the write
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class RequestLoop:
    """One thread of request-like writes on one alias, until ``stop`` is set."""

    alias: str
    label: str
    stop: threading.Event
    units: list[Unit] = field(default_factory=list)
    pause: float = 0.005
    #: HOST is one address in front of the servers (see the module's docstring).
    behind_proxy: bool = False

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            key = uuid.uuid4().hex
            try:
                port = in_request(lambda key=key: self._write(key))
            except Error as exc:
                unit = Unit(started, time.monotonic(), key, None, type(exc).__name__)
            else:
                unit = Unit(started, time.monotonic(), key, port)
            self.units.append(unit)
            time.sleep(self.pause if unit.ok else self.pause * 4)
        connections.close_all()

    def _write(self, key: str) -> int:
        if self.behind_proxy:
            with connections[self.alias].cursor() as cursor:
                cursor.execute(INSERT_RETURNING_PORT, [key])
                return cursor.fetchone()[0]
        Order.objects.using(self.alias).create(key=key)
        # psycopg 3 reports the port as a string.
        return int(connections[self.alias].connection.info.port)

    # -- reading the results ----------------------------------------------------------

    @property
    def acknowledged(self) -> list[Unit]:
        return [u for u in self.units if u.ok]

    def failed_after(self, moment: float) -> list[Unit]:
        """Failed units that started after ``moment``: none of them met the fault itself."""
        return [u for u in self.units if not u.ok and u.started >= moment]

    def failed_in_flight(self, moment: float) -> list[Unit]:
        return [u for u in self.units if not u.ok and u.started < moment]

    def first_write_after(self, moment: float, port: int) -> float | None:
        """When the first write acknowledged by ``port`` after ``moment`` came back."""
        done = [u.ended for u in self.units if u.ok and u.port == port and u.ended >= moment]
        return min(done) if done else None

    @property
    def longest(self) -> float:
        return max((u.ended - u.started for u in self.units), default=0.0)

    @property
    def errors(self) -> Counter[str]:
        return Counter(u.error for u in self.units if u.error)

    @property
    def duplicates(self) -> int:
        """Writes the server refused as already there: a unit run twice."""
        return self.errors[IntegrityError.__name__]


@contextmanager
def running(loops: list[RequestLoop], join_timeout: float = 90) -> Iterator[list[RequestLoop]]:
    """Run each loop in its own thread for the duration of the block."""
    threads = [threading.Thread(target=loop.run, name=loop.label) for loop in loops]
    for thread in threads:
        thread.start()
    try:
        yield loops
    finally:
        for loop in loops:
            loop.stop.set()
        for thread in threads:
            thread.join(join_timeout)
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"request loops still running: {stuck}"


def acknowledged_keys(loops: list[RequestLoop]) -> list[str]:
    return [u.key for loop in loops for u in loop.acknowledged]


def wait_for_writes(
    loops: list[RequestLoop], since: float, port: int | None = None, count: int = 3
) -> None:
    """Poll until every loop has ``count`` writes that began after ``since`` (on ``port``)."""

    def done() -> bool:
        return all(
            sum(u.ok and u.started >= since and port in (None, u.port) for u in loop.units) >= count
            for loop in loops
        )

    wait_for(done, 90, "every request loop to write", interval=0.05)


def report(title: str, loops: list[RequestLoop], fault_at: float, **figures: object) -> None:
    print(f"\n{title}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    for loop in loops:
        after, in_flight = loop.failed_after(fault_at), loop.failed_in_flight(fault_at)
        print(
            f"  {loop.label:<18} units {len(loop.units):>5}  failed after the fault "
            f"{len(after):>4}  in flight {len(in_flight)}  longest unit {loop.longest:5.2f}s"
            f"  errors {dict(loop.errors)}"
        )
