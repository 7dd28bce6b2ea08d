"""A TCP proxy the test controls: a database server that goes down, hangs, or comes back,
without stopping the real server that other tests share."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from urllib.parse import urlsplit, urlunsplit


class Proxy:
    """Forwards 127.0.0.1:<port> to ``target``. ``down()`` refuses and cuts connections,
    ``hang()`` accepts but forwards nothing, ``freeze()`` keeps every connection open and
    forwards nothing on any, ``up()`` forwards again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode = "up"
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._listen()

    def _listen(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            with self._lock:
                self._conns.append(client)
            if self.mode in ("hang", "freeze"):
                continue  # held open, never answered
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.append(server)
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError, ValueError):
            while self.mode in ("up", "freeze"):
                if self.mode == "freeze":  # held open, silent both ways
                    time.sleep(0.1)
                    continue
                ready, _, _ = select.select([a, b], [], [], 0.2)
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    (b if src is a else a).sendall(data)
        self._close(a, b)

    def _close(self, *socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def _cut(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        self._close(*conns)

    def down(self) -> None:
        """Like a stopped server: connections cut, new ones refused."""
        self.mode = "down"
        if self._listener is not None:
            self._close(self._listener)
            self._listener = None
        self._cut()

    def hang(self) -> None:
        """Like a server that stopped answering: connections cut, new ones never answered."""
        self.mode = "hang"
        self._cut()
        if self._listener is None:
            self._listen()

    def url(self, url: str) -> str:
        """``url`` (a database or broker URL) reaching its server through this proxy."""
        parts = urlsplit(url)
        user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{self.port}"))

    def freeze(self) -> None:
        """Like a peer that stopped answering without closing anything (a paused process, a
        black-holed network): open connections stay open and go silent."""
        self.mode = "freeze"

    def up(self) -> None:
        """Forward again."""
        self._cut()
        self.mode = "up"
        if self._listener is None:
            self._listen()

    def close(self) -> None:
        self.down()
