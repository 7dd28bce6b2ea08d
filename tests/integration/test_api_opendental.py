"""The Subscriptions API as an Open Dental client uses it: /api/v1, ODFHIR, Open Dental's dates.

The client side is written from opendental.com/site/apisubscriptions.html and
apiimplementation.html only: its routes, its fields, ``yyyy-MM-dd HH:mm:ss`` times, and
"0001-01-01 00:00:00" for a DateTimeStop that never comes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from apievents.api.app import create_app
from apievents.common import api_keys, db
from apievents.common.settings import Settings
from apievents.common.ssrf import EndpointPolicy

V1 = "/api/v1/subscriptions"
NEVER = "0001-01-01 00:00:00"
OPEN_DENTAL_FIELDS = [
    "SubscriptionNum",
    "EndPointUrl",
    "Workstation",
    "CustomerKey",
    "WatchTable",
    "PollingSeconds",
    "UiEventType",
    "DateTimeStart",
    "DateTimeStop",
    "Note",
]


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    url = Settings(database_url=database_url, timezone="America/Chicago").database_url
    pool = db.pool(url, 4, "api-test")
    try:
        # Open Dental's own examples name a LAN endpoint (192.168.1.14): opt in to private ones.
        with TestClient(create_app(pool, EndpointPolicy(deny_private=False), 3600)) as c:
            yield c
    finally:
        pool.close()


@pytest.fixture
def odfhir(conn: psycopg.Connection[Any]) -> dict[str, str]:
    assert api_keys.create_pair(conn, "VzkmZEaUWOjnQX2z", "NFF6i0KrXrxDkZHt") == {
        "CustomerKey": "VzkmZEaUWOjnQX2z",
        "DeveloperKey": "NFF6i0KrXrxDkZHt",
    }
    return {"Authorization": "ODFHIR NFF6i0KrXrxDkZHt/VzkmZEaUWOjnQX2z"}


def od_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")  # Open Dental's only format


def test_an_open_dental_client_creates_lists_updates_and_deletes(
    client: TestClient, odfhir: dict[str, str]
) -> None:
    body = {
        "EndPointUrl": "http://192.168.1.14:2097/",
        "Workstation": "",
        "WatchTable": "Appointment",
        "PollingSeconds": 5,
        "UiEventType": "PatientSelected",
        "DateTimeStart": "2022-01-31",
        "DateTimeStop": NEVER,
    }
    created = client.post(V1, json=body, headers=odfhir)
    assert created.status_code == 201, created.text
    sub = created.json()
    assert list(sub)[: len(OPEN_DENTAL_FIELDS)] == OPEN_DENTAL_FIELDS
    assert (sub["CustomerKey"], sub["UiEventType"]) == ("VzkmZEaUWOjnQX2z", "PatientSelected")
    assert (sub["DateTimeStart"], sub["DateTimeStop"]) == ("2022-01-31 00:00:00", NEVER)
    num = sub["SubscriptionNum"]

    (listed,) = client.get(V1, headers=odfhir).json()
    assert listed["SubscriptionNum"] == num and listed["DateTimeStop"] == NEVER
    od_time(listed["DateTimeStart"])

    put = client.put(
        f"{V1}/{num}",
        json={"PollingSeconds": 9, "DateTimeStop": "2030-12-31", "Note": "front desk"},
        headers=odfhir,
    )
    assert put.status_code == 200, put.text
    assert (put.json()["PollingSeconds"], put.json()["DateTimeStop"]) == (9, "2030-12-31 00:00:00")
    never = client.put(f"{V1}/{num}", json={"DateTimeStop": NEVER}, headers=odfhir).json()
    assert never["DateTimeStop"] == NEVER and never["UiEventType"] == "PatientSelected"
    assert never["Note"] == "front desk"

    # The original routes answer the same subscription in ISO 8601, with null for "never".
    iso = client.get(f"/subscriptions/{num}", headers=odfhir).json()
    assert iso["DateTimeStop"] is None
    assert iso["DateTimeStart"] == "2022-01-31T00:00:00-06:00"  # APIEVENTS_TIMEZONE's midnight

    assert client.delete(f"{V1}/{num}", headers=odfhir).status_code == 200
    assert client.get(f"{V1}/{num}", headers=odfhir).status_code == 404
    assert client.get(V1, headers=odfhir).json() == []


def test_a_subscription_to_a_ui_event_only_is_400_saying_why(
    client: TestClient, odfhir: dict[str, str]
) -> None:
    ui = {"EndPointUrl": "http://localhost:2097/", "UiEventType": "PatientSelected"}
    for body in (ui, ui | {"WatchTable": "", "PollingSeconds": 0}):
        r = client.post(V1, json=body, headers=odfhir)
        assert r.status_code == 400
        assert r.json()["error"].startswith("UiEventType: PatientSelected is a UI event")
    bad = client.post(
        V1,
        json=ui | {"WatchTable": "Appointment", "PollingSeconds": 5, "UiEventType": "Nope"},
        headers=odfhir,
    )
    assert bad.status_code == 400 and bad.json()["error"].startswith("UiEventType:")


def test_keys_are_checked_and_stored_hashed(
    client: TestClient, conn: psycopg.Connection[Any], odfhir: dict[str, str]
) -> None:
    for header in (
        "ODFHIR NFF6i0KrXrxDkZHt/SomeOtherOffice",
        "ODFHIR wrong/VzkmZEaUWOjnQX2z",
        "ODFHIR NFF6i0KrXrxDkZHt",
        "ODFHIR ",
    ):
        r = client.get(V1, headers={"Authorization": header})
        assert r.status_code == 401, header
    bearer = {"Authorization": f"Bearer {api_keys.create(conn, 'VzkmZEaUWOjnQX2z')['ApiKey']}"}
    assert client.get(V1, headers=bearer).status_code == 200  # Bearer is accepted here too
    assert client.get("/subscriptions", headers=odfhir).status_code == 200  # and ODFHIR there
    stored = " ".join(h for (h,) in conn.execute("SELECT key_hash FROM apievents.api_key"))
    assert "NFF6i0KrXrxDkZHt" not in stored and "VzkmZEaUWOjnQX2z" not in stored
    pair = api_keys.odfhir("NFF6i0KrXrxDkZHt", "VzkmZEaUWOjnQX2z")
    assert [r["CustomerKey"] for r in api_keys.revoke(conn, pair)] == ["VzkmZEaUWOjnQX2z"]
    assert client.get(V1, headers=odfhir).status_code == 401
    assert client.get(V1, headers=bearer).status_code == 200  # only the pair was revoked
    with pytest.raises(ValueError, match="--developer-key"):
        api_keys.create_pair(conn, "office", "has/slash")


def test_v1_is_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/v1/subscriptions", "/api/v1/subscriptions/{num}", "/subscriptions"} <= set(paths)
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json() == {"status": "ready"}
