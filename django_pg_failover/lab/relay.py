"""A loopback TCP relay in front of a server, that can hold back the end of its stream."""

from __future__ import annotations

import socket
import threading
from contextlib import suppress

from .node import LOOPBACK


class Relay:
    """Forwards every connection made to ``port`` to a server on ``target_port``.

    A connection made while nothing listens on the target is closed at once
    (the client reads the end of the stream, as from a proxy with no server).

    With ``hold_close`` what a server sends still reaches its client at once,
    but not the end of the stream when the server closes the connection: the
    client's socket stays open until :meth:`release_close`. A client then sees
    a server's last message on its own, as it would in the instant between a
    server's goodbye and its close, for as long as a test needs.
    """

    def __init__(self, target_port: int, host: str = LOOPBACK, hold_close: bool = False) -> None:
        self.target = (host, target_port)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.bind((host, 0))
        self._listener.listen(16)
        self.port: int = self._listener.getsockname()[1]
        #: Set once a server closed a relayed connection.
        self.server_closed = threading.Event()
        self._released = threading.Event()
        if not hold_close:
            self._released.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="lab-relay", daemon=True).start()

    def retarget(self, target_port: int) -> None:
        """Send new connections to ``target_port`` from now on, as a proxy, a virtual
        IP or a DNS name moved to a new primary does; those relayed already stay."""
        with self._lock:
            self.target = (self.target[0], target_port)

    def release_close(self) -> None:
        """Let the ends of the servers' streams through."""
        self._released.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                target = self.target
            try:
                server = socket.create_connection(target, timeout=5)
            except OSError:
                # Nothing listens there (a server down, an address not moved yet):
                # the client's connection ends at once, as a proxy's would.
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            for source, sink, from_server in ((client, server, False), (server, client, True)):
                threading.Thread(
                    target=self._pump, args=(source, sink, from_server), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_server: bool) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        if from_server:
            self.server_closed.set()
            self._released.wait()
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._released.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
