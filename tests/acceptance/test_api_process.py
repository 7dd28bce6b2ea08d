"""`apievents api` as a real process, with keys from `apievents api-keys`."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path

import httpx
import pytest

from tests.acceptance.test_observability import free_port
from tests.support import wait_for
from tests.support.processes import Service, cli, cli_json, service_env

pytestmark = pytest.mark.acceptance


def test_api_serves_with_cli_managed_keys(database_url: str) -> None:
    port = free_port()
    env = service_env(
        database_url,
        "unused",
        APIEVENTS_API_PORT=str(port),
        APIEVENTS_MAX_SUBSCRIPTIONS_PER_CUSTOMER="1",
    )
    created = cli_json(env, "api-keys", "create", "--customer-key", "office-1")
    assert created["CustomerKey"] == "office-1" and created["ApiKey"].startswith("apiev_")
    assert created["ApiKey"] not in str(cli_json(env, "api-keys", "list"))
    bad = cli(env, "api-keys", "create", "--customer-key", "")
    assert bad.returncode == 2 and bad.stderr.startswith("apievents: error: --customer-key")
    auth = {"Authorization": f"Bearer {created['ApiKey']}"}
    api = Service("api", env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(base), 30, "the API")
        body = {
            "EndPointUrl": "http://localhost:2097/",
            "WatchTable": "Patient",
            "PollingSeconds": 10,
        }
        r = httpx.post(f"{base}/subscriptions", headers=auth, json=body)
        assert r.status_code == 201 and r.json()["CustomerKey"] == "office-1"
        r = httpx.post(f"{base}/subscriptions", headers=auth, json=body)  # over the cap of 1
        assert r.status_code == 400 and r.json()["error"].startswith("CustomerKey:"), r.text
        assert httpx.get(f"{base}/openapi.json").json()["info"]["title"] == "apievents"
        pair = cli_json(
            env, "api-keys", "create", "--customer-key", "office-1", "--developer-key", "DK1"
        )
        assert pair == {"CustomerKey": "office-1", "DeveloperKey": "DK1"}
        again = cli(
            env, "api-keys", "create", "--customer-key", "office-1", "--developer-key", "DK1"
        )
        assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
        od = {"Authorization": "ODFHIR DK1/office-1"}
        (listed,) = httpx.get(f"{base}/api/v1/subscriptions", headers=od).json()
        assert listed["DateTimeStop"] == "0001-01-01 00:00:00" and listed["UiEventType"] == ""
        assert httpx.get(f"{base}/readyz").status_code == 200
        revoked = cli_json(env, "api-keys", "revoke", "--api-key", created["ApiKey"])
        assert [k["CustomerKey"] for k in revoked] == ["office-1"]
        assert httpx.get(f"{base}/subscriptions", headers=auth).status_code == 401
        assert api.terminate() == 0, api.output()
    finally:
        api.close()


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/openapi.json", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


MB = 1024 * 1024


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far, in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def post_without_waiting(port: int, total: int, *, chunked: bool) -> tuple[int, int]:
    """POST ``total`` bytes with no Authorization header, reading the answer while sending.

    Returns the answer's status and how many body bytes the server let us send before it
    answered and closed the connection.
    """
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    head = "POST /subscriptions HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
    block = b"x" * MB
    piece = f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"{head}{framing}\r\n\r\n".encode())

        def send_body() -> None:
            nonlocal sent
            try:
                while sent < total:
                    s.sendall(piece)
                    sent += len(block)
            except OSError:  # the server answered and closed: the rest is never sent
                pass

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        s.settimeout(60)
        answer = s.recv(4096)
        sender.join(60)
    return int(answer.split()[1]), sent


def test_a_200_mb_unauthenticated_post_does_not_grow_the_api(database_url: str) -> None:
    port = free_port()
    api = Service("api", service_env(database_url, "unused", APIEVENTS_API_PORT=str(port)))
    try:
        wait_for(lambda: _up(f"http://127.0.0.1:{port}"), 30, "the API")
        before = peak_rss(api.proc.pid)
        status, sent = post_without_waiting(port, 200 * MB, chunked=True)
        assert status == 401 and sent < 200 * MB  # answered from the headers alone
        status, sent = post_without_waiting(port, 200 * MB, chunked=False)
        assert status == 413 and sent < 200 * MB  # the declared length is refused at once
        grown = peak_rss(api.proc.pid) - before
        assert grown < 20 * MB, f"the API's peak memory grew by {grown / MB:.0f} MB"
        assert api.terminate() == 0, api.output()
    finally:
        api.close()


def test_the_api_stops_on_sigterm_though_a_client_never_sends_its_body(database_url: str) -> None:
    """A request whose body never comes gets the shutdown timeout (10 s here), not forever;
    SIGUSR1 before that writes the stacks and stops nothing."""
    port = free_port()
    api = Service("api", service_env(database_url, "unused", APIEVENTS_API_PORT=str(port)))
    try:
        wait_for(lambda: _up(f"http://127.0.0.1:{port}"), 30, "the API")
        with socket.create_connection(("127.0.0.1", port)) as stuck:
            stuck.sendall(
                b"POST /openapi.json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n"
            )
            api.proc.send_signal(signal.SIGUSR1)
            wait_for(lambda: "Current thread" in api.output(), 10, "the stacks written")
            assert api.proc.poll() is None
            assert api.terminate(timeout=25) == 0
    finally:
        api.close()
