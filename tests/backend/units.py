"""Request-like write loops for the failover tests (in_request: tests/load.py)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import Error, connections

from shop.models import Order
from tests.load import in_request


def create(alias: str, key: str | None = None) -> str:
    key = key or uuid.uuid4().hex
    Order.objects.using(alias).create(key=key)
    return key


def port_of(alias: str) -> int:
    return int(connections[alias].connection.info.port)


def keys_on(node, keys: list[str]) -> list[str]:
    rows = node.query("SELECT key FROM shop_order WHERE key = ANY(%s)", [keys], dbname="app")
    return [r[0] for r in rows]


def stock_alias(make_alias) -> str:
    """Django's own backend on the same lab, set up at its best."""
    return make_alias(stock=True)


@dataclass
class WriteLoop:
    """Request-like writes in a thread; failures sorted by when they started."""

    alias: str
    crashed_at: list[float]
    stop: threading.Event
    acknowledged: list[str] = field(default_factory=list)
    failed_in_flight: int = 0
    failed_after_crash: int = 0
    ports: list[int] = field(default_factory=list)
    #: When each acknowledged write returned.
    done_at: list[float] = field(default_factory=list)
    #: Seconds between units (a site's pace: idle pooled connections between them).
    pause: float = 0.005

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                key = in_request(lambda: self._write())
            except Error:
                if self.crashed_at and started >= self.crashed_at[0]:
                    self.failed_after_crash += 1
                else:
                    self.failed_in_flight += 1
                time.sleep(0.01)
            else:
                self.acknowledged.append(key)
                self.done_at.append(time.monotonic())
            time.sleep(self.pause)
        connections.close_all()

    def _write(self) -> str:
        key = create(self.alias)
        self.ports.append(port_of(self.alias))
        return key


def run_loops(loops: list[WriteLoop], fault: Callable[[], None], warm_up: float = 0.5) -> None:
    """Run the loops in threads, inject ``fault`` once traffic flows, stop them after it."""
    threads = [threading.Thread(target=loop.run) for loop in loops]
    for thread in threads:
        thread.start()
    try:
        time.sleep(warm_up)  # healthy traffic first
        fault()
    finally:
        for loop in loops:
            loop.stop.set()
        for thread in threads:
            thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
