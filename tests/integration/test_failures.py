"""Endpoints that fail: the window is retried while DateTimeStart holds; others keep flowing."""

from __future__ import annotations

import socket
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import (
    caught_up,
    date_time_start,
    insert_appointments,
    state,
    subscribe,
)
from tests.support import wait_for
from tests.support.receiver import Receiver, sleep_then, status
from tests.support.services import Pipeline


def first_stamp(conn: psycopg.Connection[Any], keys: list[int]) -> Any:
    """The DateTStamp of the oldest of these rows: a held watermark stays below it."""
    return conn.execute(
        "SELECT min(datetstamp) FROM appointment WHERE aptnum = ANY(%s)", (keys,)
    ).fetchone()[0]  # type: ignore[index]


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()  # nothing listens here now: connections are refused
    return port


@pytest.mark.parametrize("failure", ["http_500", "timeout", "refused"])
def test_failing_endpoint_holds_its_watermark_while_others_flow(
    failure: str, conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    if failure == "refused":
        bad_url = f"http://127.0.0.1:{closed_port()}/down"
    else:
        receiver.behaviours["/down"] = status(500) if failure == "http_500" else sleep_then(3)
        bad_url = receiver.url("/down")
    bad = subscribe(conn, bad_url)
    good = subscribe(conn, receiver.url("/up"))
    held = date_time_start(conn, bad)
    keys = insert_appointments(conn, 1200)
    pipeline.start_all()

    wait_for(lambda: len(receiver.delivered("/up")) == 1200, 30, "the healthy subscription")
    wait_for(lambda: state(conn, bad)["ConsecutiveFailures"] >= 2, 30, "retries")
    # It may pass empty windows (nothing to POST), never the first row it still owes.
    assert held <= date_time_start(conn, bad) < first_stamp(conn, keys)
    s = state(conn, bad)
    assert s["LastError"] and s["Status"] == "active"
    assert date_time_start(conn, good) > held
    more = insert_appointments(conn, 3)  # the healthy one keeps flowing during the outage
    wait_for(lambda: len(receiver.delivered("/up")) == 1203, 30, "later changes")

    # The endpoint recovers: the held window is delivered whole, then the later rows.
    if failure == "refused":
        pipeline.stop_all()
        conn.execute(
            "UPDATE apievents.subscription SET endpoint_url = %s WHERE subscription_num = %s",
            (receiver.url("/down"), bad),
        )
        pipeline.start_all()
    receiver.behaviours["/down"] = status(200)
    wait_for(
        lambda: {r["AptNum"] for r in receiver.delivered("/down")} >= set(keys + more),
        30,
        "the held rows after recovery",
    )
    wait_for(lambda: state(conn, bad)["ConsecutiveFailures"] == 0, 30, "reset failures")
    assert date_time_start(conn, bad) > held


def test_non_200_success_codes_are_failures(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    receiver.behaviours["/r"] = status(204)
    num = subscribe(conn, receiver.url("/r"))
    held = date_time_start(conn, num)
    keys = insert_appointments(conn, 1)
    pipeline.start_all()
    wait_for(lambda: state(conn, num)["ConsecutiveFailures"] >= 1, 30, "a failure")
    assert state(conn, num)["LastHttpStatus"] == 204
    assert held <= date_time_start(conn, num) < first_stamp(conn, keys)


def test_failure_in_a_later_batch_resends_from_that_batch_in_order(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    receiver.behaviours["/f"] = lambda n: 500 if n == 1 else 200  # the second POST fails once
    num = subscribe(conn, receiver.url("/f"))
    keys = insert_appointments(conn, 2500)
    pipeline.start_all()
    wait_for(lambda: caught_up(conn, num, keys), 30, "the retried window")
    got = [r["AptNum"] for r in receiver.delivered("/f")]
    # Batch 1 got 200, so the failed window kept it; the retry starts at batch 2 and
    # re-sends it (at-least-once), then the rest, in order.
    assert got == keys
    assert [b.status for b in receiver.batches("/f")] == [200, 500, 200, 200]
    assert state(conn, num)["ConsecutiveFailures"] == 0  # progress is not a failure streak
