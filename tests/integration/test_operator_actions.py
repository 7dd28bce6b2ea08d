"""Operator actions at the edges: rewinding to the printed start, and DateTimeStop passing."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from apievents.common import subscriptions
from tests.integration.conftest import cursor, insert_appointments, state, subscribe
from tests.support import wait_for
from tests.support.receiver import Receiver, sleep_then, status
from tests.support.services import LOOPBACK_POLICY, Pipeline, fast_settings


@pytest.mark.parametrize("how", ["rewind", "update"])
def test_setting_the_start_to_the_one_show_prints_keeps_the_rows_after_the_cursor(
    how: str, database_url: str, prefix: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    # 100 rows share one DateTStamp, 10 to a batch. Three batches get 200 and a checkpoint;
    # then the endpoint fails, so the subscription sits inside that timestamp at key 30.
    healthy = [False]
    receiver.behaviours["/c"] = lambda n: 200 if n < 3 or healthy[0] else 500
    num = subscribe(conn, receiver.url("/c"))
    keys = insert_appointments(conn, 100)
    p = Pipeline(fast_settings(database_url, prefix, batch_size=10, checkpoint_batches=3))
    p.start_all()
    try:
        wait_for(lambda: cursor(conn, num) == str(keys[29]), 30, "the checkpoint at key 30")
        shown = subscriptions.get(conn, num)["DateTimeStart"]
        if how == "rewind":
            subscriptions.rewind(conn, num, shown)
        else:
            subscriptions.update(conn, num, {"date_time_start": shown}, LOOPBACK_POLICY)
        assert cursor(conn, num) == str(keys[29])  # the same start: the position is the same
        healthy[0] = True
        wait_for(
            lambda: {r["AptNum"] for r in receiver.delivered("/c")} >= set(keys),
            30,
            "the rows after the cursor",
        )
    finally:
        p.stop_all()


def test_rows_still_owed_when_the_stop_passes_are_sent_and_then_it_expires(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    (now,) = conn.execute("SELECT now()").fetchone()  # type: ignore[misc]
    stop = now + timedelta(seconds=2)
    receiver.behaviours["/s"] = status(500)  # the endpoint is down when the stop passes
    num = subscribe(conn, receiver.url("/s"), date_time_stop=stop.isoformat())
    clock = subscribe(conn, receiver.url("/clock"))
    owed = insert_appointments(conn, 5)
    pipeline.start_all()
    wait_for(lambda: state(conn, num)["ConsecutiveFailures"] >= 1, 30, "a failure")
    wait_for(lambda: conn.execute("SELECT now() > %s", (stop,)).fetchone() == (True,), 10)
    assert state(conn, num)["Status"] == "active"  # rows are owed: not expired yet
    receiver.behaviours["/s"] = status(200)
    wait_for(lambda: len(receiver.delivered("/s")) >= 5, 30, "the rows owed before the stop")
    assert [r["AptNum"] for r in receiver.delivered("/s")] == owed
    wait_for(lambda: state(conn, num)["Status"] == "expired", 30, "expired once delivered")
    assert state(conn, num)["DateTimeStart"] == stop.isoformat()

    later = insert_appointments(conn, 2)  # after the stop: never sent
    wait_for(lambda: len(receiver.delivered("/clock")) == 7, 30, "a later poll")
    assert [r["AptNum"] for r in receiver.delivered("/s")] == owed
    assert {r["AptNum"] for r in receiver.delivered("/clock")} == set(owed + later)
    assert state(conn, clock)["Status"] == "active"


@pytest.mark.parametrize("edit", ["pause", "endpoint"])
def test_an_edit_while_a_window_waits_for_a_slot_stops_its_first_post(
    edit: str, database_url: str, prefix: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    settings = fast_settings(
        database_url, prefix, lease_seconds=20, http_timeout=8, worker_concurrency=1
    )
    receiver.behaviours["/a"] = sleep_then(3.0)  # holds the worker's only POST slot
    subscribe(conn, receiver.url("/a"))
    insert_appointments(conn, 3)
    p = Pipeline(settings).start_all(workers=1)
    try:
        wait_for(lambda: receiver.active("/a") == 1, 15, "the other subscription's POST")
        # Only now /b: its first window holds the rows, and waits for the slot /a holds.
        num = subscribe(conn, receiver.url("/b"), date_time_start="2000-01-01T00:00:00Z")
        wait_for(lambda: state(conn, num)["InFlight"], 2, "the window waiting for the slot")
        assert receiver.active("/a") == 1  # still holding the only slot
        if edit == "pause":
            subscriptions.set_status(conn, num, "paused")
        else:
            subscriptions.update(conn, num, {"endpoint_url": receiver.url("/new")}, LOOPBACK_POLICY)
        edited = time.monotonic()
        wait_for(lambda: not receiver.active("/a") and receiver.spans, 15, "the slot's release")
        time.sleep(1.0)  # the waiting window has had its chance to POST
    finally:
        p.stop_all()
    assert [start for path, start, _ in receiver.spans if path == "/b" and start > edited] == []
