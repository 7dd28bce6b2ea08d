"""An office's REST client (ODFHIR DK/CK) subscribes to its own office's MariaDB source."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from apievents.api.app import create_app
from apievents.common import api_keys, db, sources, subscriptions
from apievents.common.settings import Settings
from apievents.common.ssrf import EndpointPolicy
from tests.support.mariadb import add_office, mariadb_database

V1 = "/api/v1/subscriptions"
BODY = {
    "EndPointUrl": "http://192.168.1.14:2097/",
    "WatchTable": "Appointment",
    "PollingSeconds": 5,
}


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    pool = db.pool(Settings(database_url=database_url).database_url, 4, "api-test")
    try:
        with TestClient(create_app(pool, EndpointPolicy(deny_private=False), 3600)) as c:
            yield c
    finally:
        pool.close()


@pytest.fixture
def office(conn: psycopg.Connection[Any]) -> Iterator[str]:
    with mariadb_database() as url:
        add_office(conn, "north", url)
        yield url


def pair(conn: psycopg.Connection[Any], ck: str) -> dict[str, str]:
    api_keys.create_pair(conn, ck, "DEVKEY0000000001")
    return {"Authorization": f"ODFHIR DEVKEY0000000001/{ck}"}


def test_a_customer_key_of_a_source_subscribes_to_that_office(
    conn: psycopg.Connection[Any], client: TestClient, office: str
) -> None:
    conn.execute(
        "INSERT INTO apievents.customer_source (customer_key, source) VALUES ('OFFICE1', 'north')"
    )
    auth = pair(conn, "OFFICE1")
    answer = client.post(V1, json=BODY, headers=auth)
    assert answer.status_code == 201, answer.text
    assert answer.json()["WatchTable"] == "Appointment"  # the name its office knows
    stored = subscriptions.get(conn, answer.json()["SubscriptionNum"])
    assert stored["WatchTable"] == "north.Appointment"
    num = answer.json()["SubscriptionNum"]
    moved = client.put(f"{V1}/{num}", json={"WatchTable": "Patient"}, headers=auth)
    assert moved.status_code == 200, moved.text
    assert subscriptions.get(conn, num)["WatchTable"] == "north.Patient"
    tables = client.get("/api/v1/watchtables", headers=auth).json()
    assert sorted(t["WatchTable"] for t in tables) == [
        "Appointment",
        "AppointmentDeleted",
        "Patient",
    ]
    assert all(t["Table"].endswith(("appointment", "patient", "histappointment")) for t in tables)


def test_a_customer_without_a_source_stays_on_postgresql(
    conn: psycopg.Connection[Any], client: TestClient, office: str
) -> None:
    answer = client.post(V1, json=BODY, headers=pair(conn, "OTHER1"))
    assert answer.status_code == 201, answer.text
    stored = subscriptions.get(conn, answer.json()["SubscriptionNum"])
    assert stored["WatchTable"] == "Appointment"
    assert sources.of_customer(conn, "OTHER1") == ""


def test_no_customer_reaches_another_offices_tables_by_naming_them_in_full(
    conn: psycopg.Connection[Any], client: TestClient, office: str
) -> None:
    # north's WatchTables are stored as north.Appointment; naming that in full must not let a
    # customer of PostgreSQL, or of another office, subscribe to north's patients.
    with mariadb_database() as south_url:
        add_office(conn, "south", south_url)
        conn.execute(
            "INSERT INTO apievents.customer_source (customer_key, source) VALUES ('S1', 'south')"
        )
        auths = {ck: pair(conn, ck) for ck in ("S1", "PG1")}
        for ck, auth in auths.items():
            for name in ("north.Appointment", "north.Patient"):
                answer = client.post(V1, json=BODY | {"WatchTable": name}, headers=auth)
                assert answer.status_code == 400, (ck, name, answer.text)
                assert "WatchTable" in answer.text
        mine = client.post(V1, json=BODY, headers=auths["S1"])
        assert mine.status_code == 201, mine.text
        num = mine.json()["SubscriptionNum"]
        moved = client.put(f"{V1}/{num}", json={"WatchTable": "north.Patient"}, headers=auths["S1"])
        assert moved.status_code == 400, moved.text
        assert subscriptions.get(conn, num)["WatchTable"] == "south.Appointment"
    assert conn.execute(
        "SELECT count(*) FROM apievents.subscription WHERE watch_table LIKE 'north.%'"
    ).fetchone() == (0,)


def test_the_operator_cannot_give_one_offices_customer_another_offices_table(
    conn: psycopg.Connection[Any], office: str
) -> None:
    with mariadb_database() as south_url:
        add_office(conn, "south", south_url)
        conn.execute(
            "INSERT INTO apievents.customer_source (customer_key, source) VALUES ('S1', 'south')"
        )
        values = {
            "endpoint_url": "http://192.168.1.14:2097/",
            "watch_table": "Appointment",
            "polling_seconds": 5,
            "customer_key": "S1",
        }
        policy = EndpointPolicy(deny_private=False)
        for wrong in ("north", ""):  # north's table, or apievents' own PostgreSQL
            with pytest.raises(subscriptions.InputError, match="belongs to source 'south'"):
                subscriptions.create(conn, values, policy, source=wrong)
        assert subscriptions.create(conn, values, policy, source="south")["WatchTable"] == (
            "south.Appointment"
        )


def test_an_operator_update_keeps_a_customer_and_its_table_on_one_source(
    conn: psycopg.Connection[Any], office: str
) -> None:
    """`subscriptions update` with only one of --customer-key and --watch-table is checked
    against the other as the subscription has it."""
    with mariadb_database() as south_url:
        add_office(conn, "south", south_url)
        conn.execute(
            "INSERT INTO apievents.customer_source (customer_key, source) VALUES ('S1', 'south')"
        )
        policy = EndpointPolicy(deny_private=False)
        base = {"endpoint_url": "http://192.168.1.14:2097/", "polling_seconds": 5}
        south = subscriptions.create(
            conn, base | {"watch_table": "Appointment", "customer_key": "S1"}, policy
        )["SubscriptionNum"]
        # a new WatchTable is looked up in the source of the subscription's CustomerKey
        moved = subscriptions.update(conn, south, {"watch_table": "Patient"}, policy)
        assert moved["WatchTable"] == "south.Patient"
        with pytest.raises(subscriptions.InputError):  # not a PostgreSQL table of that name
            subscriptions.update(conn, south, {"watch_table": "public.appointment"}, policy)
        # a CustomerKey of one office never takes over a subscription on another source
        pg = subscriptions.create(conn, base | {"watch_table": "Appointment"}, policy)
        with pytest.raises(subscriptions.InputError, match="belongs to source 'south'"):
            subscriptions.update(conn, pg["SubscriptionNum"], {"customer_key": "S1"}, policy)
        assert subscriptions.get(conn, pg["SubscriptionNum"])["CustomerKey"] == ""
        assert subscriptions.update(conn, south, {"customer_key": "S1"}, policy)["CustomerKey"]
