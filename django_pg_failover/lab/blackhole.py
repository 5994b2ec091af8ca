"""A loopback socket that accepts TCP connections and never answers."""

from __future__ import annotations

import socket

from .node import LOOPBACK


class Blackhole:
    """Listens on a loopback port and never reads, writes or accepts.

    The kernel completes the TCP handshake for queued connections, so a client
    sees a host that is up but hung: libpq waits ``connect_timeout`` on it.
    """

    def __init__(self, host: str = LOOPBACK) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.bind((host, 0))
        self._sock.listen(128)
        self.host = host
        self.port: int = self._sock.getsockname()[1]

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
