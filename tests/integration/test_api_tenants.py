"""The API against hostile customers: hostile inputs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from apievents.api.app import create_app
from apievents.common import api_keys, db
from tests.support.services import LOOPBACK_POLICY

GOOD = {"EndPointUrl": "http://localhost:2097/", "WatchTable": "Appointment", "PollingSeconds": 5}


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
