"""End to end through the real broker and database: every change delivered, in order."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.integration.conftest import insert_appointments, subscribe
from tests.support import wait_for
from tests.support.receiver import Receiver
from tests.support.services import Pipeline


def expect_all(receiver: Receiver, keys: list[int], path: str = "/hook") -> None:
    wait_for(lambda: len(receiver.delivered(path)) >= len(keys), 60, f"{len(keys)} rows")
    got = [r["AptNum"] for r in receiver.delivered(path)]
    assert got == keys  # exactly once here (no failures injected), in (DateTStamp, key) order


@pytest.mark.parametrize("n", [999, 1000, 1001, 2500])
def test_rows_arrive_in_batches_of_at_most_1000(
    n: int, conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    subscribe(conn, receiver.url())
    keys = insert_appointments(conn, n)
    pipeline.start_all()
    expect_all(receiver, keys)
    sizes = [len(b.rows) for b in receiver.batches()]
    assert all(1 <= s <= 1000 for s in sizes)
    assert sizes == [1000] * (n // 1000) + ([n % 1000] if n % 1000 else [])


def test_3000_rows_sharing_one_timestamp_cross_batches_without_loss(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    subscribe(conn, receiver.url())
    keys = insert_appointments(conn, 3000)
    stamps = conn.execute("SELECT count(DISTINCT datetstamp) FROM appointment").fetchone()
    assert stamps == (1,)
    pipeline.start_all()
    expect_all(receiver, keys)
    assert len(receiver.batches()) == 3


def test_rows_with_distinct_timestamps_arrive_in_timestamp_order(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    subscribe(conn, receiver.url())
    keys = insert_appointments(conn, 1200, one_transaction=False)
    # Move the first row to the end: order is by DateTStamp, not by key.
    conn.execute("UPDATE appointment SET note = 'moved' WHERE aptnum = %s", (keys[0],))
    pipeline.start_all()
    expect_all(receiver, [*keys[1:], keys[0]])
    assert receiver.delivered()[-1]["Note"] == "moved"


def test_updates_are_delivered_with_their_new_values(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    subscribe(conn, receiver.url())
    keys = insert_appointments(conn, 10, note="booked")
    pipeline.start_all()
    wait_for(lambda: len(receiver.delivered()) == 10, 30, "first delivery")
    conn.execute(
        "UPDATE appointment SET note = 'moved', aptstatus = 2 WHERE aptnum = ANY(%s)", (keys[:3],)
    )
    wait_for(lambda: len(receiver.delivered()) == 13, 30, "the updates")
    updates = receiver.delivered()[10:]
    assert [r["AptNum"] for r in updates] == keys[:3]
    assert all(r["Note"] == "moved" and r["AptStatus"] == 2 for r in updates)


def test_headers_and_open_dental_field_names(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    subscribe(conn, receiver.url(), customer_key="ck-123", workstation="FRONTDESK")
    subscribe(conn, receiver.url("/p"), watch_table="Patient")
    conn.execute(
        "INSERT INTO patient (lname, fname, birthdate) VALUES ('Doe', 'Jane', '1980-02-03')"
    )
    conn.execute(
        "INSERT INTO appointment (patnum, aptstatus, note, aptdatetime) "
        "VALUES (7, 1, 'cleaning', '2026-12-01 09:30')"
    )
    pipeline.start_all()
    wait_for(lambda: receiver.delivered() and receiver.delivered("/p"), 30, "both tables")
    batch = receiver.batches()[0]
    assert batch.headers["Content-Type"] == "application/json"
    assert batch.headers["Authorization"] == "ck-123"
    assert batch.headers["Workstation"] == "FRONTDESK"
    assert batch.headers["Event-Type"] == "WatchTable: Appointment"
    # No Workstation: APIEVENTS_SENDER_NAME's default, never the worker's host name.
    assert receiver.batches("/p")[0].headers["Workstation"] == "apievents"
    (row,) = batch.rows
    assert set(row) == {
        "AptNum",
        "PatNum",
        "AptStatus",
        "Pattern",
        "Confirmed",
        "Op",
        "ProvNum",
        "Note",
        "AptDateTime",
        "DateTStamp",
    }
    assert row["AptDateTime"] == "2026-12-01T09:30:00"
    assert row["DateTStamp"].endswith("+00:00") or "+" in row["DateTStamp"]
    patient = receiver.batches("/p")[0]
    assert patient.headers["Event-Type"] == "WatchTable: Patient"
    assert patient.rows[0]["LName"] == "Doe" and patient.rows[0]["Birthdate"] == "1980-02-03"


def test_deletions_arrive_through_the_deletion_log(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    subscribe(conn, receiver.url("/del"), watch_table="AppointmentDeleted")
    keys = insert_appointments(conn, 5)
    conn.execute("DELETE FROM appointment WHERE aptnum = ANY(%s)", (keys[1:3],))
    pipeline.start_all()
    wait_for(lambda: len(receiver.delivered("/del")) == 2, 30, "deletions")
    assert [r["AptNum"] for r in receiver.delivered("/del")] == keys[1:3]


def test_two_subscriptions_on_one_table_each_get_everything(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    subscribe(conn, receiver.url("/a"))
    subscribe(conn, receiver.url("/b"))
    keys = insert_appointments(conn, 1500)
    pipeline.start_all(workers=2)
    expect_all(receiver, keys, "/a")
    expect_all(receiver, keys, "/b")
