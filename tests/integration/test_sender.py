"""The POST itself, on a real local server: what goes on the wire, and what never does."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from apievents.common.ssrf import EndpointPolicy
from apievents.worker.sender import Answer, Sender, SenderClosed
from tests.support import wait_for
from tests.support.receiver import Receiver, sleep_then
from tests.support.services import LOOPBACK_POLICY

pytestmark = pytest.mark.integration
T = TypeVar("T")


def run(use: Callable[[Sender], Awaitable[T]], policy: EndpointPolicy = LOOPBACK_POLICY) -> T:
    async def go() -> T:
        sender = Sender(3.0, 1.0, 4, policy)
        try:
            return await use(sender)
        finally:
            await sender.close()

    return asyncio.run(go())


def test_headers_go_out_as_given_over_http_1_1(receiver: Receiver) -> None:
    headers = {"Content-Type": "application/json", "Authorization": "", "Workstation": "w 1"}
    answer = run(lambda s: s.post(f"http://127.0.0.1:{receiver.port}/x?a=1", b"[1]", headers))
    assert answer.ok and answer.http_status == 200
    (batch,) = receiver.received
    assert (batch.path, batch.version, batch.body) == ("/x?a=1", "HTTP/1.1", b"[1]")
    got = batch.headers
    assert got["Authorization"] == "" and got["Workstation"] == "w 1"  # an empty value is sent
    assert got["Content-Type"] == "application/json" and got["User-Agent"] == "apievents"
    assert got["Host"] == f"127.0.0.1:{receiver.port}"
    assert "Expect" not in got and "Accept-Encoding" not in got and "Cookie" not in got


def test_connections_are_kept_alive(receiver: Receiver) -> None:
    async def many(s: Sender) -> list[Answer]:
        return [await s.post(f"http://127.0.0.1:{receiver.port}/k", b"[]", {}) for _ in range(20)]

    assert all(a.ok for a in run(many))
    assert len(receiver.received) == 20 and receiver.connections == 1


def test_proxy_variables_are_ignored(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    with Receiver() as trap:
        for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, trap.url("/"))
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        assert run(lambda s: s.post(f"http://127.0.0.1:{receiver.port}/p", b"[]", {})).ok
    assert len(receiver.received) == 1 and trap.connections == 0


def test_a_header_with_a_line_break_is_never_sent(receiver: Receiver) -> None:
    smuggled = {"Workstation": "w\r\nX-Injected: 1"}
    with pytest.raises(ValueError, match="line break"):
        run(lambda s: s.post(f"http://127.0.0.1:{receiver.port}/h", b"[]", smuggled))
    assert receiver.connections == 0


def test_a_post_cancelled_midway_leaves_the_sender_usable(receiver: Receiver) -> None:
    release = threading.Event()
    receiver.behaviours["/hold"] = lambda n: release.wait(10) and 200

    async def cancel_then_post(s: Sender) -> Answer:
        held = asyncio.ensure_future(s.post(f"http://127.0.0.1:{receiver.port}/hold", b"[]", {}))
        while not receiver.active("/hold"):
            await asyncio.sleep(0.01)
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held
        return await s.post(f"http://127.0.0.1:{receiver.port}/after", b"[]", {})

    try:
        assert run(cancel_then_post).ok
    finally:
        release.set()
    wait_for(lambda: len(receiver.spans) == 2, 10, "the held POST's answer")
    assert [path for path, _, _ in sorted(receiver.spans, key=lambda s: s[1])] == [
        "/hold",
        "/after",
    ]


def test_the_address_dialled_is_vetted_even_if_the_name_check_is_skipped(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check at connect stands alone: with the name check skipped (as for a URL that
    libcurl reads apart from Python), a refused address is still never dialled."""

    async def unvetted(self: Sender, target: Any) -> list[str]:
        return []

    monkeypatch.setattr(Sender, "_resolve", unvetted)
    answer = run(
        lambda s: s.post(f"http://127.0.0.1:{receiver.port}/x", b"[]", {}), EndpointPolicy()
    )
    assert answer.error_class == "refused" and "127.0.0.1" in (answer.error or "")
    assert receiver.connections == 0


def test_an_international_name_is_sent_in_its_ascii_form(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo
    asked: list[str] = []

    def lookup(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(host)
        return real("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    answer = run(lambda s: s.post(f"http://bücher.test:{receiver.port}/i", b"[]", {}))
    assert answer.ok
    assert asked == ["xn--bcher-kva.test"]
    assert receiver.received[0].headers["Host"] == f"xn--bcher-kva.test:{receiver.port}"


def test_a_hanging_name_delays_no_other_post(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
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
                sender.post(f"http://hangs.test:{receiver.port}/", b"[]", {})
            )
            fine = await sender.post(f"http://fine.test:{receiver.port}/fine", b"[]", {})
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
    host: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python keeps %61 in a host name, libcurl decodes it: such a name would be vetted as one
    name and looked up by libcurl, past our resolver, as another."""
    asked: list[str] = []
    real = socket.getaddrinfo
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda h, *a, **k: asked.append(h) or real("127.0.0.1", *a, **k)
    )
    answer = run(lambda s: s.post(f"http://{host}:{receiver.port}/x", b"[]", {}))
    assert answer.error_class == "invalid_url"
    assert asked == [] and receiver.connections == 0


def test_the_lookup_counts_toward_the_deadline(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo

    def slow(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(1.0)
        return real("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    receiver.behaviours["/x"] = sleep_then(0.8)  # 0.8 s after the lookup: 1.8 s, past 1.5 s

    async def go() -> Answer:
        sender = Sender(1.0, 0.5, 4, LOOPBACK_POLICY, dns_timeout=5.0)
        try:
            return await sender.post(f"http://slow-dns.test:{receiver.port}/x", b"[]", {})
        finally:
            await sender.close()

    assert asyncio.run(go()).error_class == "timeout"


def test_header_values_go_out_in_utf8_and_blank_ones_are_kept(receiver: Receiver) -> None:
    headers = {"Authorization": " ", "Workstation": "Zoë"}
    assert run(lambda s: s.post(f"http://127.0.0.1:{receiver.port}/u", b"[]", headers)).ok
    got = receiver.received[0].headers
    assert got["Authorization"] == ""
    assert got["Workstation"].encode("latin-1").decode() == "Zoë"  # http.server reads latin-1


def test_a_post_waiting_for_its_lookup_when_the_sender_closes_is_never_sent(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, release = socket.getaddrinfo, threading.Event()

    def held(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        release.wait(5)
        return real("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", held)

    async def go() -> None:
        sender = Sender(3.0, 1.0, 4, LOOPBACK_POLICY)
        waiting = asyncio.ensure_future(
            sender.post(f"http://held.test:{receiver.port}/", b"[]", {})
        )
        await asyncio.sleep(0.2)
        await sender.close()
        release.set()
        with pytest.raises(SenderClosed):
            await waiting

    asyncio.run(go())
    assert receiver.connections == 0


def test_a_full_pool_of_idle_connections_makes_room_for_another_host() -> None:
    """Connections are capped at the worker's concurrency, idle ones included: a POST to a
    new host closes the oldest idle one instead of waiting for it to expire."""
    with Receiver() as a, Receiver() as b, Receiver() as c:

        async def go() -> list[Answer]:
            sender = Sender(2.0, 1.0, 2, LOOPBACK_POLICY)  # at most 2 connections
            try:
                return [await sender.post(r.url("/"), b"[]", {}) for r in (a, b, c)]
            finally:
                await sender.close()

        assert all(answer.ok for answer in asyncio.run(go()))
        assert [r.connections for r in (a, b, c)] == [1, 1, 1]


def test_a_non_ascii_path_and_query_are_sent_percent_encoded(receiver: Receiver) -> None:
    url = f"http://127.0.0.1:{receiver.port}/hook/é?q=ü&kept=%2F"
    assert run(lambda s: s.post(url, b"[]", {})).ok
    assert receiver.received[0].path == "/hook/%C3%A9?q=%C3%BC&kept=%2F"


def test_an_idle_handle_keeps_no_body(receiver: Receiver) -> None:
    """A finished POST's handle is kept for the next one, but not its body (nor its headers,
    which carry the customer's key)."""
    body = b"[" + b"1," * 50_000 + b"1]"
    before = sys.getrefcount(body)

    async def post_and_count(s: Sender) -> int:
        assert (await s.post(f"http://127.0.0.1:{receiver.port}/b", body, {})).ok
        assert len(s.idle) == 1
        return sys.getrefcount(body)

    assert run(post_and_count) == before
