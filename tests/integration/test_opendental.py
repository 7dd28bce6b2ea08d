"""Open Dental's tables and webhook rows, end to end through the pipeline.

The database is migrated with --opendental-schema, next to the tables Open Dental's derived
fields read (definition, provider, clinic, site). Every delivered row must parse with a
receiver written only from Open Dental's documentation (tests/support/opendental_receiver.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from apievents.common import subscriptions
from apievents.common.migrate import migrate
from tests.support import opendental_receiver, wait_for
from tests.support.receiver import Receiver
from tests.support.services import (
    LOOPBACK_POLICY,
    Pipeline,
    admin,
    connect,
    db_url,
    fast_settings,
)

ZONE = "America/Chicago"  # not the server's zone (UTC): dates must follow APIEVENTS_TIMEZONE
LOOKUPS = """
CREATE TABLE definition (defnum bigint PRIMARY KEY, category smallint NOT NULL DEFAULT 0,
                         itemname varchar(255) NOT NULL DEFAULT '');
CREATE TABLE provider (provnum bigint PRIMARY KEY, abbr varchar(255) NOT NULL DEFAULT '');
CREATE TABLE clinic (clinicnum bigint PRIMARY KEY, abbr varchar(255) NOT NULL DEFAULT '');
CREATE TABLE site (sitenum bigint PRIMARY KEY, description varchar(255) NOT NULL DEFAULT '');
INSERT INTO definition VALUES (19, 2, 'Not Called'), (38, 4, 'Standard Account');
INSERT INTO provider VALUES (1, 'DOC1');
INSERT INTO clinic VALUES (1, 'Southside');
"""


@pytest.fixture
def od_url() -> Iterator[str]:
    name = f"apievents_od_{uuid.uuid4().hex[:10]}"
    admin(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(db_url(name), autocommit=True) as conn:
            conn.execute(LOOKUPS)
            migrate(conn, opendental_schema=True)
        yield db_url(name)
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def od_pipeline(od_url: str, prefix: str) -> Iterator[Pipeline]:
    p = Pipeline(fast_settings(od_url, prefix, timezone=ZONE)).start_all()
    yield p
    p.stop_all()


def subscribe_all(conn: psycopg.Connection[Any], receiver: Receiver) -> None:
    for table in opendental_receiver.SHAPES:
        values = {"endpoint_url": receiver.url(f"/{table}"), "watch_table": table}
        subscriptions.create(conn, values | {"polling_seconds": 1}, LOOPBACK_POLICY)


def assert_fields(row: dict[str, Any], expected: dict[str, Any]) -> None:
    assert {k: row.get(k) for k in expected} == expected


def rows_of(receiver: Receiver, table: str, n: int) -> list[dict[str, Any]]:
    wait_for(lambda: len(receiver.delivered(f"/{table}")) >= n, 30, f"{n} {table} rows")
    return receiver.delivered(f"/{table}")


def test_every_row_parses_with_a_receiver_written_from_open_dentals_docs(
    od_url: str, od_pipeline: Pipeline, receiver: Receiver
) -> None:
    with connect(od_url) as conn:
        subscribe_all(conn, receiver)
        conn.execute("INSERT INTO appointment DEFAULT VALUES")  # every column has a default
        conn.execute(
            "INSERT INTO appointment (patnum, aptstatus, pattern, confirmed, provnum, "
            "aptdatetime, isnewpatient, coloroverride, priority, note) VALUES "
            "(1, 1, '//XXXX//', 19, 1, '2020-07-31 08:30:00', true, %s, 1, 'first visit')",
            (-16744448,),  # ARGB 255,0,128,0
        )
        conn.execute(
            "INSERT INTO patient (lname, fname, gender, position, birthdate, priprov, clinicnum, "
            "billingtype, estbalance, txtmsgok, premed) "
            "VALUES ('Harrison', 'Bradley', 0, 1, '1986-11-06', 1, 1, 38, 12.5, 1, true)"
        )
        conn.execute("INSERT INTO patient DEFAULT VALUES")
        stamp = conn.execute(
            "SELECT to_char(datetstamp AT TIME ZONE %s, 'YYYY-MM-DD HH24:MI:SS') "
            "FROM appointment WHERE patnum = 1",
            (ZONE,),
        ).fetchone()
    appointments = rows_of(receiver, "Appointment", 2)
    patients = rows_of(receiver, "Patient", 2)
    for table, rows in (("Appointment", appointments), ("Patient", patients)):
        for row in rows:
            opendental_receiver.parse(table, row)
            documented = opendental_receiver.SHAPES[table]
            assert set(row) == set(documented), table  # every documented field, no other
    blank, booked = appointments
    assert (blank["AptStatus"], blank["confirmed"], blank["AptDateTime"]) == (
        "None",
        "",
        "0001-01-01 00:00:00",
    )
    assert_fields(
        booked,
        {
            "AptStatus": "Scheduled",
            "confirmed": "Not Called",
            "provAbbr": "DOC1",
            "unschedStatus": "",
            "colorOverride": "0,128,0",
            "AptDateTime": "2020-07-31 08:30:00",
            "IsNewPatient": "true",
            "TimeLocked": "false",
            "Priority": "ASAP",
        },
    )
    assert stamp is not None and booked["DateTStamp"] == stamp[0]  # in APIEVENTS_TIMEZONE
    assert list(booked)[4:6] == ["Confirmed", "confirmed"]  # derived fields in their place
    harrison = next(p for p in patients if p["LName"] == "Harrison")
    assert_fields(
        harrison,
        {
            "Gender": "Male",
            "Position": "Married",
            "Birthdate": "1986-11-06",
            "BillingType": "Standard Account",
            "priProvAbbr": "DOC1",
            "secProvAbbr": "",
            "clinicAbbr": "Southside",
            "siteDesc": "",
            "EstBalance": 12.5,
            "TxtMsgOk": "Yes",
            "Premed": "true",
            "PatStatus": "Patient",
        },
    )


def test_a_deleted_appointment_arrives_through_appointment_deleted_with_its_columns(
    od_url: str, od_pipeline: Pipeline, receiver: Receiver
) -> None:
    with connect(od_url) as conn:
        subscribe_all(conn, receiver)
        (apt,) = conn.execute(
            "INSERT INTO appointment (patnum, aptstatus, note, provnum, aptdatetime) "
            "VALUES (7, 1, 'to be deleted', 1, '2026-03-02 09:00:00') RETURNING aptnum"
        ).fetchone() or (0,)
        rows_of(receiver, "Appointment", 1)
        # Other actions in the history table are not deletions: never sent as one.
        conn.execute("INSERT INTO histappointment (aptnum, histapptaction) VALUES (%s, 1)", (apt,))
        conn.execute("DELETE FROM appointment WHERE aptnum = %s", (apt,))
        (deleted,) = rows_of(receiver, "AppointmentDeleted", 1)
        conn.execute("INSERT INTO appointment (patnum) VALUES (8)")
        rows_of(receiver, "Appointment", 2)
    opendental_receiver.parse("AppointmentDeleted", deleted)
    assert_fields(
        deleted,
        {
            "HistApptAction": "Deleted",
            "ApptSource": "None",
            "AptNum": apt,
            "PatNum": 7,
            "AptStatus": "Scheduled",
            "Note": "to be deleted",
            "ProvNum": 1,
            "AptDateTime": "2026-03-02 09:00:00",
        },
    )
    assert len(receiver.delivered("/AppointmentDeleted")) == 1


def test_without_the_tables_they_read_derived_fields_are_left_out(prefix: str) -> None:
    name = f"apievents_od_{uuid.uuid4().hex[:10]}"
    admin(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(db_url(name), autocommit=True) as conn:
            migrate(conn, opendental_schema=True)
            wts = {wt["WatchTable"]: wt for wt in (w.to_json() for w in _all(conn))}
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert [d["field"] for d in wts["Appointment"]["Derived"]] == ["colorOverride"]
    assert "Derived" not in wts["Patient"]  # and BillingType stays the DefNum
    assert wts["Patient"]["Fields"]["billingtype"] == "BillingType"
    assert wts["AppointmentDeleted"]["Where"] == {"histapptaction": 4}


def _all(conn: psycopg.Connection[Any]) -> list[Any]:
    from apievents.common import registry

    return registry.all_tables(conn)
