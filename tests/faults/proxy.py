"""A loopback TCP proxy a test can cut and restore: the database restarting, deterministically.

``TcpProxy(target_port).start()`` listens on 127.0.0.1 on a port of its own and
relays every connection to the target. ``cut()`` is the server going away: every
open connection is closed (clients see their socket end mid-conversation, as when
Postgres terminates its backends) and the port stops listening (new connections
are refused). ``restore()`` listens again on the same port. No sleeping: ``cut``
returns once the port is closed and every relay has stopped.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

#: Bytes relayed per read.
CHUNK = 65536


class TcpProxy:
    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket, threading.Thread]] = []
        #: Connections accepted so far, and how many ``cut`` severed.
        self.accepted = 0
        self.severed = 0

    def start(self) -> TcpProxy:
        self._listen()
        return self

    @property
    def up(self) -> bool:
        return self._listener is not None

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accepting = threading.Thread(
            target=self._accept, args=(listener,), name="tcp-proxy", daemon=True
        )
        self._accepting.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed: cut
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            relay = threading.Thread(
                target=self._relay, args=(client, server), name="tcp-relay", daemon=True
            )
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    server.close()
                    return
                self._pairs.append((client, server, relay))
                self.accepted += 1
            relay.start()

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        with selectors.DefaultSelector() as sel:
            sel.register(a, selectors.EVENT_READ)
            sel.register(b, selectors.EVENT_READ)
            try:
                while True:
                    for key, _ in sel.select():
                        data = key.fileobj.recv(CHUNK)  # type: ignore[union-attr]
                        if not data:
                            return
                        peer[key.fileobj].sendall(data)  # type: ignore[index]
            except (OSError, ValueError):
                return  # closed under us by cut, or by either side
            finally:
                for s in (a, b):
                    with contextlib.suppress(OSError):
                        s.close()
                with self._lock:
                    self._pairs = [p for p in self._pairs if p[0] is not a]

    def cut(self) -> None:
        """The server is gone: open connections end, new ones are refused."""
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, []
        if listener is not None:
            with contextlib.suppress(OSError):  # wakes the thread waiting in accept()
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._accepting is not None:
            self._accepting.join(5)
        for client, server, relay in pairs:
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            relay.join(5)
            self.severed += 1

    def restore(self) -> None:
        """The server is back, on the same port."""
        if self._listener is None:
            self._listen()

    def close(self) -> None:
        self.cut()
