"""A webhook receiver on 127.0.0.1 that records every POST and answers as told per path."""

from __future__ import annotations

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
    status: int
    body: bytes


@dataclass(frozen=True)
class Reply:
    """A full answer: status, extra headers and a body."""

    status: int
    headers: dict[str, str]
    body: bytes = b"ok"


# A behaviour decides the answer: an HTTP status, a Reply, or "close" to drop the connection.
Behaviour = Callable[[int], "int | str | Reply"]


def status(code: int) -> Behaviour:
    return lambda n: code


def sleep_then(seconds: float, code: int = 200) -> Behaviour:
    def behave(n: int) -> int:
        time.sleep(seconds)
        return code

    return behave


class Receiver:
    """Start with ``with Receiver() as r:``; ``r.url('/a')`` is an endpoint."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.behaviours: dict[str, Behaviour] = {}
        self._counts: dict[str, int] = {}
        self._active: dict[str, int] = {}
        self.max_concurrent: dict[str, int] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    n = receiver._counts.get(self.path, 0)
                    receiver._counts[self.path] = n + 1
                    behave = receiver.behaviours.get(self.path, status(200))
                    active = receiver._active.get(self.path, 0) + 1
                    receiver._active[self.path] = active
                    top = max(active, receiver.max_concurrent.get(self.path, 0))
                    receiver.max_concurrent[self.path] = top
                try:
                    answer = behave(n)
                finally:
                    with receiver._lock:
                        receiver._active[self.path] -= 1
                if answer == "close":
                    self.close_connection = True
                    self.connection.close()
                    return
                reply = answer if isinstance(answer, Reply) else Reply(int(answer), {})
                with receiver._lock:
                    receiver.received.append(
                        Received(
                            self.path, dict(self.headers), orjson.loads(body), reply.status, body
                        )
                    )
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (its timeout)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

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
