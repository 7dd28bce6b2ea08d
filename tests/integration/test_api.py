"""The Subscriptions REST API against the real database: routes, rules, tenant isolation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from apievents.api.app import create_app
from apievents.common import api_keys, db
from tests.integration.conftest import insert_appointments
from tests.support.services import LOOPBACK_POLICY

GOOD = {"EndPointUrl": "http://localhost:2097/", "WatchTable": "Appointment", "PollingSeconds": 5}


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    pool = db.pool(database_url, 4, "api-test")
    try:
        with TestClient(create_app(pool, LOOPBACK_POLICY, 3600)) as c:
            yield c
    finally:
        pool.close()


@pytest.fixture
def keys(conn: psycopg.Connection[Any]) -> dict[str, dict[str, str]]:
    return {
        ck: {"Authorization": f"Bearer {api_keys.create(conn, ck)['ApiKey']}"}
        for ck in ("office-a", "office-b")
    }


def test_crud_with_open_dental_fields(client: TestClient, keys: dict[str, Any]) -> None:
    a = keys["office-a"]
    created = client.post(
        "/subscriptions",
        json=GOOD | {"Note": "n", "Workstation": "WS", "CustomerKey": "forged"},
        headers=a,
    )
    assert created.status_code == 201, created.text
    sub = created.json()
    assert sub["CustomerKey"] == "office-a"  # from the key, never from the body
    assert sub["Secret"].startswith("whsec_") and sub["Status"] == "active"
    num = sub["SubscriptionNum"]
    got = client.get(f"/subscriptions/{num}", headers=a).json()
    assert got["Secret"] is None and got["Note"] == "n"
    assert [s["SubscriptionNum"] for s in client.get("/subscriptions", headers=a).json()] == [num]
    put = client.put(f"/subscriptions/{num}", json={"PollingSeconds": 9}, headers=a)
    assert put.status_code == 200
    assert (put.json()["PollingSeconds"], put.json()["Note"], put.json()["Workstation"]) == (
        9,
        "n",
        "WS",
    )  # a PUT changes only the fields it names
    assert client.get(f"/subscriptions/{num}/attempts", headers=a).json() == []
    rewound = client.post(
        f"/subscriptions/{num}/rewind", json={"To": "2020-01-01T00:00:00Z"}, headers=a
    )
    assert rewound.status_code == 200 and rewound.json()["DateTimeStart"].startswith("2020")
    assert client.delete(f"/subscriptions/{num}", headers=a).json()["SubscriptionNum"] == num
    assert client.get(f"/subscriptions/{num}", headers=a).status_code == 404


def test_watchtables_and_openapi(client: TestClient, keys: dict[str, Any]) -> None:
    names = {w["WatchTable"] for w in client.get("/watchtables", headers=keys["office-a"]).json()}
    assert names == {"Appointment", "AppointmentDeleted", "Patient"}
    spec = client.get("/openapi.json").json()
    assert {
        "/subscriptions",
        "/subscriptions/{num}",
        "/watchtables",
        "/subscriptions/{num}/attempts",
        "/subscriptions/{num}/rewind",
    } <= set(spec["paths"])


@pytest.mark.parametrize(
    "body, field",
    [
        (GOOD | {"EndPointUrl": "ftp://x/"}, "EndPointUrl"),
        (GOOD | {"EndPointUrl": "http://169.254.169.254/latest"}, "EndPointUrl"),
        (GOOD | {"WatchTable": "Nope"}, "WatchTable"),
        (GOOD | {"PollingSeconds": 0}, "PollingSeconds"),
        (GOOD | {"PollingSeconds": -3}, "PollingSeconds"),
        (GOOD | {"PollingSeconds": "often"}, "PollingSeconds"),
        (GOOD | {"DateTimeStart": "yesterday"}, "DateTimeStart"),
        (GOOD | {"Secret": "short"}, "Secret"),
        (GOOD | {"Secret": "whsec_\u0080"}, "Secret"),  # found by schemathesis: was a 500
        (GOOD | {"Surprise": 1}, "Surprise"),
        ({k: v for k, v in GOOD.items() if k != "WatchTable"}, "WatchTable"),
        ({k: v for k, v in GOOD.items() if k != "EndPointUrl"}, "EndPointUrl"),
    ],
)
def test_bad_fields_are_400_naming_the_field(
    body: dict[str, Any], field: str, client: TestClient, keys: dict[str, Any]
) -> None:
    r = client.post("/subscriptions", json=body, headers=keys["office-a"])
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith(f"{field}:"), r.json()
    assert client.get("/subscriptions", headers=keys["office-a"]).json() == []


def test_malformed_json_is_400(client: TestClient, keys: dict[str, Any]) -> None:
    r = client.post(
        "/subscriptions",
        content=b"{not json",
        headers=keys["office-a"] | {"Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "error" in r.json()


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic dXNlcjpwdw=="}]
)
def test_401_without_a_valid_key(headers: dict[str, str], client: TestClient) -> None:
    for method, path in [
        ("GET", "/subscriptions"),
        ("POST", "/subscriptions"),
        ("GET", "/subscriptions/1"),
        ("GET", "/watchtables"),
    ]:
        r = client.request(method, path, json=GOOD, headers=headers)
        assert r.status_code == 401 and r.json()["error"], (method, path)
        assert r.headers["WWW-Authenticate"] == "Bearer"


def test_revoked_keys_stop_working(
    client: TestClient, conn: psycopg.Connection[Any], keys: dict[str, Any]
) -> None:
    key = keys["office-a"]["Authorization"].removeprefix("Bearer ")
    assert client.get("/subscriptions", headers=keys["office-a"]).status_code == 200
    assert api_keys.revoke(conn, api_key=key)[0]["CustomerKey"] == "office-a"
    assert client.get("/subscriptions", headers=keys["office-a"]).status_code == 401
    stored = conn.execute("SELECT key_hash FROM apievents.api_key").fetchall()
    assert all(key not in h for (h,) in stored)  # only digests are stored


def test_tenant_isolation(
    client: TestClient, conn: psycopg.Connection[Any], keys: dict[str, Any]
) -> None:
    a, b = keys["office-a"], keys["office-b"]
    num = client.post("/subscriptions", json=GOOD, headers=a).json()["SubscriptionNum"]
    insert_appointments(conn, 1)
    assert client.get("/subscriptions", headers=b).json() == []
    for method, path, body in [
        ("GET", f"/subscriptions/{num}", None),
        ("PUT", f"/subscriptions/{num}", {"Note": "mine now"}),
        ("DELETE", f"/subscriptions/{num}", None),
        ("GET", f"/subscriptions/{num}/attempts", None),
        ("POST", f"/subscriptions/{num}/rewind", {"To": "2020-01-01T00:00:00Z"}),
    ]:
        r = client.request(method, path, json=body, headers=b)
        assert r.status_code == 404, (method, r.text)
        assert r.json() == {"error": f"no subscription {num}"}
    untouched = client.get(f"/subscriptions/{num}", headers=a).json()
    assert untouched["Note"] == "" and untouched["DateTimeStart"] > "2021"
