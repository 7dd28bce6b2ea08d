"""The API against hostile customers: hostile inputs, oversized bodies, hanging DNS, fair share."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from apievents.api.app import create_app
from apievents.common import api_keys, db, subscriptions
from tests.integration.conftest import insert_appointments, state, subscribe
from tests.support import wait_for
from tests.support.receiver import Receiver
from tests.support.services import LOOPBACK_POLICY, Pipeline

GOOD = {"EndPointUrl": "http://localhost:2097/", "WatchTable": "Appointment", "PollingSeconds": 5}
HANGING_HOST = "hang.apievents.test"
MAX_BODY_BYTES, MAX_NOTE = 128 * 1024, 4000  # as the README documents them


@pytest.fixture
def pool(database_url: str) -> Iterator[Any]:
    p = db.pool(database_url, 2, "api-tenants")
    yield p
    p.close()


@pytest.fixture
def app(pool: Any) -> FastAPI:
    return create_app(pool, LOOPBACK_POLICY, 3600)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def strict(pool: Any) -> Iterator[TestClient]:
    """At most 2 subscriptions per customer, and 1 s for an endpoint's name to resolve."""
    with TestClient(
        create_app(pool, LOOPBACK_POLICY, 3600, dns_timeout=1.0, max_subscriptions=2)
    ) as c:
        yield c


@pytest.fixture
def keys(conn: psycopg.Connection[Any]) -> dict[str, dict[str, str]]:
    return {
        ck: {"Authorization": f"Bearer {api_keys.create(conn, ck)['ApiKey']}"}
        for ck in ("office-a", "office-b")
    }


def json_text(extra: str) -> bytes:
    """GOOD with extra members written as raw JSON, so escapes like \\ud800 reach the server."""
    return (orjson.dumps(GOOD).decode()[:-1] + ", " + extra + "}").encode()


# -- inputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, field",
    [
        ('"Workstation": "Caf\\u00e9"', "Workstation"),
        ('"Workstation": "WS\\u2028"', "Workstation"),
        ('"Workstation": "WS\\u0085"', "Workstation"),
        ('"Workstation": "WS\\u0000"', "Workstation"),
        (f'"Workstation": "{"W" * 256}"', "Workstation"),
        ('"Note": "a\\u0000b"', "Note"),
        ('"Note": "\\ud800"', "Note"),
        (f'"Note": "{"n" * 4001}"', "Note"),
        ('"EndPointUrl": "http://localhost:2097/\\u0000"', "EndPointUrl"),
        ('"EndPointUrl": "http://localhost:2097/\\ud800"', "EndPointUrl"),
        ('"WatchTable": "Appoint\\u0000ment"', "WatchTable"),
        ('"DateTimeStart": "0001-01-01T00:00:00+23:59"', "DateTimeStart"),
        ('"DateTimeStart": "0001-01-01T00:00:00"', "DateTimeStart"),
        ('"DateTimeStop": "9999-12-31T23:59:00-05:00"', "DateTimeStop"),
        ('"DateTimeStart": "2020-01-01T00:00:00\\u0000"', "DateTimeStart"),
    ],
)
def test_hostile_inputs_are_400_naming_the_field_and_store_nothing(
    extra: str, field: str, client: TestClient, keys: dict[str, Any]
) -> None:
    a = keys["office-a"] | {"Content-Type": "application/json"}
    r = client.post("/subscriptions", content=json_text(extra), headers=a)
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith(f"{field}:"), r.json()
    assert client.get("/subscriptions", headers=a).json() == []
    num = client.post("/subscriptions", json=GOOD, headers=a).json()["SubscriptionNum"]
    before = client.get(f"/subscriptions/{num}", headers=a).json()
    r = client.put(f"/subscriptions/{num}", content=("{" + extra + "}").encode(), headers=a)
    assert r.status_code == 400 and r.json()["error"].startswith(f"{field}:"), r.text
    assert client.get(f"/subscriptions/{num}", headers=a).json() == before


@pytest.mark.parametrize("to", ["0001-01-01T00:00:00+23:59", "1066-10-14T09:00:00Z", "\u0000"])
def test_rewind_to_a_time_out_of_range_is_400(
    to: str, client: TestClient, keys: dict[str, Any]
) -> None:
    a = keys["office-a"]
    num = client.post("/subscriptions", json=GOOD, headers=a).json()["SubscriptionNum"]
    r = client.post(f"/subscriptions/{num}/rewind", json={"To": to}, headers=a)
    assert r.status_code == 400 and r.json()["error"].lower().startswith("to:"), r.text


# -- body size and authentication, before the body is read --------------------------------------


def call(app: FastAPI, headers: dict[str, str], chunks: list[bytes]) -> tuple[int, Any, int]:
    """POST /subscriptions straight through ASGI; the status, the answer, and the body bytes the
    application pulled from the client."""
    pulled = 0
    answer: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if not chunks:
            return {"type": "http.request", "body": b"", "more_body": False}
        chunk = chunks.pop()
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] = answer.get("body", b"") + message.get("body", b"")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/subscriptions",
        "raw_path": b"/subscriptions",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    return answer["status"], orjson.loads(answer["body"]), pulled


MEGABYTES_20 = [b"x" * 65536 for _ in range(320)]


def test_an_unauthenticated_body_is_never_read(app: FastAPI) -> None:
    for headers in [{}, {"Authorization": "Bearer apiev_unknown"}, {"Authorization": "Basic x"}]:
        status, body, pulled = call(app, headers, list(MEGABYTES_20))
        assert (status, pulled) == (401, 0), body
        assert body["error"]


def test_a_declared_oversized_body_is_413_before_authentication(app: FastAPI) -> None:
    size = str(200 * 1024 * 1024)
    for headers in [{"Content-Length": size}, {"Content-Length": size, "Authorization": "x"}]:
        status, body, pulled = call(app, headers, list(MEGABYTES_20))
        assert (status, pulled) == (413, 0), body
        assert body == {"error": f"body: larger than {MAX_BODY_BYTES} bytes"}


def test_an_authenticated_chunked_body_is_read_only_up_to_the_limit(
    app: FastAPI, keys: dict[str, Any]
) -> None:
    status, body, pulled = call(app, keys["office-a"], list(MEGABYTES_20))
    assert status == 413, body
    assert pulled <= MAX_BODY_BYTES + 65536


def test_a_body_within_the_limit_still_works(client: TestClient, keys: dict[str, Any]) -> None:
    note = "\U0001f600" * MAX_NOTE  # the worst case: 12 bytes of JSON escape each
    body = orjson.dumps(GOOD | {"Note": note}, option=orjson.OPT_NON_STR_KEYS)
    body = body.replace(note.encode(), b"\\ud83d\\ude00" * MAX_NOTE)
    assert len(body) <= MAX_BODY_BYTES
    headers = keys["office-a"] | {"Content-Type": "application/json"}
    r = client.post("/subscriptions", content=body, headers=headers)
    assert r.status_code == 201 and r.json()["Note"] == note


# -- DNS: a timeout, and no database connection while it resolves ------------------------------


@pytest.fixture
def hanging_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """HANGING_HOST never resolves (until the test ends); every other name resolves as usual."""
    real, release = socket.getaddrinfo, threading.Event()

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == HANGING_HOST:
            release.wait(20)
            raise socket.gaierror("released")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    release.set()


def test_a_hanging_dns_lookup_holds_no_connection_and_ends_in_a_400(
    hanging_dns: None, strict: TestClient, keys: dict[str, Any]
) -> None:
    client = strict
    a = keys["office-a"]
    hanging = GOOD | {"EndPointUrl": f"http://{HANGING_HOST}/"}
    with ThreadPoolExecutor(4) as ex:
        started = time.monotonic()
        posts = [
            ex.submit(client.post, "/subscriptions", json=hanging, headers=a) for _ in range(3)
        ]
        time.sleep(0.2)  # the three lookups are under way (more than the pool's 2 connections)
        for _ in range(3):  # meanwhile every other request is answered at once
            t = time.monotonic()
            assert client.get("/subscriptions", headers=keys["office-b"]).status_code == 200
            assert time.monotonic() - t < 0.5
        answers = [p.result(10) for p in posts]
    for r in answers:
        assert r.status_code == 400
        assert r.json()["error"] == (
            f"EndPointUrl: refused: {HANGING_HOST} did not resolve within 1 s"
        )
    assert 1.0 <= time.monotonic() - started < 5
    assert client.get("/subscriptions", headers=a).json() == []


# -- fair share ----------------------------------------------------------------------------------


def test_subscriptions_per_customer_are_capped(
    strict: TestClient, conn: psycopg.Connection[Any], keys: dict[str, Any]
) -> None:
    client = strict
    a, b = keys["office-a"], keys["office-b"]
    nums = [client.post("/subscriptions", json=GOOD, headers=a).json()["SubscriptionNum"]]
    nums.append(client.post("/subscriptions", json=GOOD, headers=a).json()["SubscriptionNum"])
    over = client.post("/subscriptions", json=GOOD, headers=a)
    assert over.status_code == 400
    assert over.json()["error"] == (
        "CustomerKey: already has 2 subscriptions, the most allowed "
        "(APIEVENTS_MAX_SUBSCRIPTIONS_PER_CUSTOMER); delete one first"
    )
    assert client.post("/subscriptions", json=GOOD, headers=b).status_code == 201  # not b's cap
    assert client.delete(f"/subscriptions/{nums[0]}", headers=a).status_code == 200
    assert client.post("/subscriptions", json=GOOD, headers=a).status_code == 201
    # The operator (CLI, no cap) may give a customer more.
    subscribe(conn, GOOD["EndPointUrl"], customer_key="office-a")
    assert len(client.get("/subscriptions", headers=a).json()) == 3


def test_concurrent_creates_cannot_both_take_the_last_place(
    strict: TestClient, keys: dict[str, Any]
) -> None:
    client = strict
    a = keys["office-a"]
    with ThreadPoolExecutor(6) as ex:
        answers = list(
            ex.map(lambda _: client.post("/subscriptions", json=GOOD, headers=a), range(6))
        )
    assert sorted(r.status_code for r in answers) == [201, 201, 400, 400, 400, 400]


# -- errors: customers see the class, never the raw text ----------------------------------------


def test_customers_see_the_error_class_never_the_raw_text(
    client: TestClient,
    conn: psycopg.Connection[Any],
    keys: dict[str, Any],
    pipeline: Pipeline,
    receiver: Receiver,
) -> None:
    with socket.socket() as s:  # a port on loopback where nothing listens
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    a = keys["office-a"]
    url = f"http://127.0.0.1:{closed}/"
    num = client.post("/subscriptions", json=GOOD | {"EndPointUrl": url}, headers=a).json()[
        "SubscriptionNum"
    ]
    insert_appointments(conn, 1)
    pipeline.start_all()
    wait_for(lambda: state(conn, num)["ConsecutiveFailures"] >= 1, 30, "a failed window")
    raw = subscriptions.get(conn, num)["LastError"]  # the operator's view
    shown = client.get(f"/subscriptions/{num}", headers=a).json()["LastError"]
    error_class = client.get(f"/subscriptions/{num}/attempts", headers=a).json()[0]["ErrorClass"]
    assert raw and shown == error_class and shown != raw
    listed = client.get("/subscriptions", headers=a).json()[0]["LastError"]
    assert listed == shown
    # A success clears both the text and the class.
    client.put(f"/subscriptions/{num}", json={"EndPointUrl": receiver.url()}, headers=a)
    wait_for(lambda: len(receiver.delivered()) == 1, 30, "delivery to the new endpoint")
    wait_for(lambda: subscriptions.get(conn, num)["LastError"] is None, 30, "the success")
    assert client.get(f"/subscriptions/{num}", headers=a).json()["LastError"] is None
