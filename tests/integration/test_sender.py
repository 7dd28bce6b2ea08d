"""The POST itself, on a real local server: what goes on the wire, and what never does."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import pytest

from apievents.common.ssrf import EndpointPolicy
from apievents.worker.sender import Answer, Sender, SenderClosed
from tests.support.services import LOOPBACK_POLICY

pytestmark = pytest.mark.integration
T = TypeVar("T")


@dataclass
class Seen:
    connections: int = 0
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    hold: threading.Event = field(default_factory=threading.Event)
    delay: float = 0.0
    port: int = 0


def server(seen: Seen) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def setup(self) -> None:
            super().setup()
            seen.connections += 1

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.requests.append((self.requestline, dict(self.headers.items()), body))
            if self.path.startswith("/hold"):
                seen.hold.wait(10)
            time.sleep(seen.delay)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture
def seen() -> Iterator[Seen]:
    found = Seen()
    httpd = server(found)
    found.port = httpd.server_address[1]
    try:
        yield found
    finally:
        found.hold.set()
        httpd.shutdown()
        httpd.server_close()


def run(use: Callable[[Sender], Awaitable[T]], policy: EndpointPolicy = LOOPBACK_POLICY) -> T:
    async def go() -> T:
        sender = Sender(3.0, 1.0, 4, policy)
        try:
            return await use(sender)
        finally:
            await sender.close()

    return asyncio.run(go())


def test_headers_go_out_as_given_over_http_1_1(seen: Seen) -> None:
    headers = {"Content-Type": "application/json", "Authorization": "", "Workstation": "w 1"}
    answer = run(lambda s: s.post(f"http://127.0.0.1:{seen.port}/x?a=1", b"[1]", headers))
    assert answer.ok and answer.http_status == 200
    ((line, got, body),) = seen.requests
    assert line == "POST /x?a=1 HTTP/1.1" and body == b"[1]"
    assert got["Authorization"] == "" and got["Workstation"] == "w 1"  # an empty value is sent
    assert got["Content-Type"] == "application/json" and got["User-Agent"] == "apievents"
    assert got["Host"] == f"127.0.0.1:{seen.port}"
    assert "Expect" not in got and "Accept-Encoding" not in got and "Cookie" not in got


def test_connections_are_kept_alive(seen: Seen) -> None:
    async def many(s: Sender) -> list[Answer]:
        return [await s.post(f"http://127.0.0.1:{seen.port}/k", b"[]", {}) for _ in range(20)]

    assert all(a.ok for a in run(many))
    assert len(seen.requests) == 20 and seen.connections == 1


def test_proxy_variables_are_ignored(seen: Seen, monkeypatch: pytest.MonkeyPatch) -> None:
    trap = Seen()
    proxy = server(trap)
    try:
        for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.server_address[1]}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        assert run(lambda s: s.post(f"http://127.0.0.1:{seen.port}/p", b"[]", {})).ok
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert len(seen.requests) == 1 and trap.connections == 0


def test_a_header_with_a_line_break_is_never_sent(seen: Seen) -> None:
    smuggled = {"Workstation": "w\r\nX-Injected: 1"}
    with pytest.raises(ValueError, match="line break"):
        run(lambda s: s.post(f"http://127.0.0.1:{seen.port}/h", b"[]", smuggled))
    assert seen.connections == 0


def test_a_post_cancelled_midway_leaves_the_sender_usable(seen: Seen) -> None:
    async def cancel_then_post(s: Sender) -> Answer:
        held = asyncio.ensure_future(s.post(f"http://127.0.0.1:{seen.port}/hold", b"[]", {}))
        while not seen.requests:
            await asyncio.sleep(0.01)
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held
        return await s.post(f"http://127.0.0.1:{seen.port}/after", b"[]", {})

    assert run(cancel_then_post).ok
    assert [r[0] for r in seen.requests] == ["POST /hold HTTP/1.1", "POST /after HTTP/1.1"]


def test_the_address_dialled_is_vetted_even_if_the_name_check_is_skipped(
    seen: Seen, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check at connect stands alone: with the name check skipped (as for a URL that
    libcurl reads apart from Python), a refused address is still never dialled."""

    async def unvetted(self: Sender, target: Any) -> list[str]:
        return []

    monkeypatch.setattr(Sender, "_resolve", unvetted)
    answer = run(lambda s: s.post(f"http://127.0.0.1:{seen.port}/x", b"[]", {}), EndpointPolicy())
    assert answer.error_class == "refused" and "127.0.0.1" in (answer.error or "")
    assert seen.connections == 0


def test_an_international_name_is_sent_in_its_ascii_form(
    seen: Seen, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo
    asked: list[str] = []

    def lookup(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(host)
        return real("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    answer = run(lambda s: s.post(f"http://bücher.test:{seen.port}/i", b"[]", {}))
    assert answer.ok
    assert asked == ["xn--bcher-kva.test"]
    assert seen.requests[0][1]["Host"] == f"xn--bcher-kva.test:{seen.port}"


def test_a_hanging_name_delays_no_other_post(seen: Seen, monkeypatch: pytest.MonkeyPatch) -> None:
    real, release = socket.getaddrinfo, threading.Event()

    def lookup(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "hangs.test":
            release.wait(10)
        return real("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)

    async def both() -> tuple[Answer, Answer]:
        sender = Sender(3.0, 1.0, 4, LOOPBACK_POLICY, dns_timeout=1.0)
        try:
            hanging = asyncio.ensure_future(
                sender.post(f"http://hangs.test:{seen.port}/", b"[]", {})
            )
            fine = await sender.post(f"http://fine.test:{seen.port}/fine", b"[]", {})
            assert not hanging.done()  # the other name answered while this one still hangs
            return fine, await hanging
        finally:
            release.set()
            await sender.close()

    fine, hanging = asyncio.run(both())
    assert fine.ok
    assert hanging.error_class == "refused" and "does not resolve" in (hanging.error or "")


@pytest.mark.parametrize("host", ["%61.test", "%6cocalhost", "a%2etest"])
def test_a_host_that_libcurl_would_decode_is_never_looked_up(
    host: str, seen: Seen, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python keeps %61 in a host name, libcurl decodes it: such a name would be vetted as one
    name and looked up by libcurl, past our resolver, as another."""
    asked: list[str] = []
    real = socket.getaddrinfo
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda h, *a, **k: asked.append(h) or real("127.0.0.1", *a, **k)
    )
    answer = run(lambda s: s.post(f"http://{host}:{seen.port}/x", b"[]", {}))
    assert answer.error_class == "invalid_url"
    assert asked == [] and seen.connections == 0


def test_the_lookup_counts_toward_the_deadline(seen: Seen, monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def slow(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(1.0)
        return real("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    seen.delay = 0.8  # the server answers 0.8 s after the request: 1.8 s in all, past 1.5 s

    async def go() -> Answer:
        sender = Sender(1.0, 0.5, 4, LOOPBACK_POLICY, dns_timeout=5.0)
        try:
            return await sender.post(f"http://slow-dns.test:{seen.port}/x", b"[]", {})
        finally:
            await sender.close()

    assert asyncio.run(go()).error_class == "timeout"


def test_header_values_go_out_in_utf8_and_blank_ones_are_kept(seen: Seen) -> None:
    headers = {"Authorization": " ", "Workstation": "Zoë"}
    assert run(lambda s: s.post(f"http://127.0.0.1:{seen.port}/u", b"[]", headers)).ok
    got = seen.requests[0][1]
    assert got["Authorization"] == ""
    assert got["Workstation"].encode("latin-1").decode() == "Zoë"  # http.server reads latin-1


def test_a_post_waiting_for_its_lookup_when_the_sender_closes_is_never_sent(
    seen: Seen, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, release = socket.getaddrinfo, threading.Event()

    def held(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        release.wait(5)
        return real("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", held)

    async def go() -> None:
        sender = Sender(3.0, 1.0, 4, LOOPBACK_POLICY)
        waiting = asyncio.ensure_future(sender.post(f"http://held.test:{seen.port}/", b"[]", {}))
        await asyncio.sleep(0.2)
        await sender.close()
        release.set()
        with pytest.raises(SenderClosed):
            await waiting

    asyncio.run(go())
    assert seen.connections == 0


def test_a_full_pool_of_idle_connections_makes_room_for_another_host() -> None:
    """Connections are capped at the worker's concurrency, idle ones included: a POST to a
    new host closes the oldest idle one instead of waiting for it to expire."""
    servers = [Seen() for _ in range(3)]
    running = [server(s) for s in servers]
    try:

        async def go() -> list[Answer]:
            sender = Sender(2.0, 1.0, 2, LOOPBACK_POLICY)  # at most 2 connections
            try:
                return [
                    await sender.post(f"http://127.0.0.1:{r.server_address[1]}/", b"[]", {})
                    for r in running
                ]
            finally:
                await sender.close()

        assert all(a.ok for a in asyncio.run(go()))
        assert [s.connections for s in servers] == [1, 1, 1]
    finally:
        for r in running:
            r.shutdown()
            r.server_close()


def test_a_non_ascii_path_and_query_are_sent_percent_encoded(seen: Seen) -> None:
    url = f"http://127.0.0.1:{seen.port}/hook/é?q=ü&kept=%2F"
    assert run(lambda s: s.post(url, b"[]", {})).ok
    assert seen.requests[0][0] == "POST /hook/%C3%A9?q=%C3%BC&kept=%2F HTTP/1.1"


def test_an_idle_handle_keeps_no_body(seen: Seen) -> None:
    """A finished POST's handle is kept for the next one, but not its body (nor its headers,
    which carry the customer's key)."""
    body = b"[" + b"1," * 50_000 + b"1]"
    before = sys.getrefcount(body)

    async def post_and_count(s: Sender) -> int:
        assert (await s.post(f"http://127.0.0.1:{seen.port}/b", body, {})).ok
        assert len(s.idle) == 1
        return sys.getrefcount(body)

    assert run(post_and_count) == before
