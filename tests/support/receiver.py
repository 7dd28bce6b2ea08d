"""A webhook receiver on 127.0.0.1 that records every POST and answers as told per path."""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    rows: list[dict[str, Any]]
    status: int  # 0: the answer was trickled and the client may have given up
    body: bytes
    version: str = "HTTP/1.1"  # of the request line


@dataclass(frozen=True)
class Reply:
    """A full answer: status, extra headers and a body."""

    status: int
    headers: dict[str, str]
    body: bytes = b"ok"


@dataclass(frozen=True)
class Trickle:
    """A 200 whose status line and headers arrive one byte every ``seconds``."""

    seconds: float


# A behaviour decides the answer: an HTTP status, a Reply, a Trickle, or "close" to drop the
# connection.
Behaviour = Callable[[int], "int | str | Reply | Trickle"]


def status(code: int) -> Behaviour:
    return lambda n: code


def sleep_then(seconds: float, code: int = 200) -> Behaviour:
    def behave(n: int) -> int:
        time.sleep(seconds)
        return code

    return behave


def _hung_up(conn: socket.socket) -> bool:
    readable, _, _ = select.select([conn], [], [], 0)
    try:
        return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class Receiver:
    """Start with ``with Receiver() as r:``; ``r.url('/a')`` is an endpoint. With ``tls``, it
    speaks HTTPS (its URLs are then the caller's to build)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.received: list[Received] = []
        self.connections = 0  # accepted so far: kept-alive POSTs share one
        self.behaviours: dict[str, Behaviour] = {}
        self._counts: dict[str, int] = {}
        self._active: dict[str, int] = {}
        self.max_concurrent: dict[str, int] = {}
        self.spans: list[tuple[str, float, float]] = []  # (path, first byte in, answer done)
        self._open: dict[int, tuple[str, float]] = {}  # POSTs being answered: (path, start)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with receiver._lock:
                    receiver.connections += 1

            def do_POST(self) -> None:
                started = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    n = receiver._counts.get(self.path, 0)
                    receiver._counts[self.path] = n + 1
                    behave = receiver.behaviours.get(self.path, status(200))
                    active = receiver._active.get(self.path, 0) + 1
                    receiver._active[self.path] = active
                    top = max(active, receiver.max_concurrent.get(self.path, 0))
                    receiver.max_concurrent[self.path] = top
                    receiver._open[id(self)] = (self.path, started)
                try:
                    self._answer(behave(n), body)
                finally:
                    with receiver._lock:
                        receiver._active[self.path] -= 1
                        del receiver._open[id(self)]
                        receiver.spans.append((self.path, started, time.monotonic()))

            def _answer(self, answer: int | str | Reply | Trickle, body: bytes) -> None:
                if answer == "close":
                    self.close_connection = True
                    self.connection.close()
                    return
                if isinstance(answer, Reply):
                    reply = answer
                elif isinstance(answer, Trickle):
                    reply = Reply(0, {})  # not an answer the client can count on
                else:
                    reply = Reply(int(answer), {})
                receiver._record(
                    self.path, dict(self.headers), body, reply.status, self.request_version
                )
                try:
                    if isinstance(answer, Trickle):
                        self._trickle(answer.seconds)
                        return
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    bodiless = reply.status in (204, 304)  # HTTP forbids these a body
                    if not bodiless:
                        self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    if not bodiless:
                        self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (its timeout)

            def _trickle(self, seconds: float) -> None:
                """Until the client hangs up: its span ends when it does, not at a failed write."""
                answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Slow: " + b"a" * 200
                for byte in answer + b"\r\n\r\nok":
                    if _hung_up(self.connection):
                        self.close_connection = True
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(seconds)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]

    def _record(
        self, path: str, headers: dict[str, str], body: bytes, code: int, version: str
    ) -> None:
        with self._lock:
            rows = orjson.loads(body)
            self.received.append(Received(path, headers, rows, code, body, version))

    def active(self, path: str = "/hook") -> int:
        """POSTs to ``path`` being answered right now."""
        with self._lock:
            return self._active.get(path, 0)

    def overlapping(self, *paths: str) -> list[tuple[float, float]]:
        """Pairs of POST spans (to any of ``paths``) that were in flight at the same time."""
        with self._lock:
            now = time.monotonic()  # a POST still being answered is in flight until now
            spans = [(s, e) for p, s, e in self.spans if p in paths]
            spans = sorted(spans + [(s, now) for p, s in self._open.values() if p in paths])
        found, latest = [], float("-inf")
        for start, end in spans:
            if start < latest:
                found.append((start, latest))
            latest = max(latest, end)
        return found

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def delivered(self, path: str = "/hook") -> list[dict[str, Any]]:
        """Rows answered with 200 at ``path``, in arrival order."""
        with self._lock:
            return [r for b in self.received if b.path == path and b.status == 200 for r in b.rows]

    def batches(self, path: str = "/hook") -> list[Received]:
        with self._lock:
            return [b for b in self.received if b.path == path]

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
