"""One POST per subscription in flight, whatever the receiver, the broker or an operator does."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

import kombu
import psycopg
import pytest

from apievents.common import db, subscriptions
from apievents.common.lifecycle import Lifecycle
from apievents.common.messages import new_id
from apievents.common.topology import JOBS
from apievents.producer.claim import claim_due
from apievents.producer.service import Producer, ProducerConfig
from tests.integration.conftest import caught_up, insert_appointments, state, subscribe
from tests.integration.test_broker import publish
from tests.support import stays, wait_for
from tests.support.receiver import Receiver, Trickle, sleep_then
from tests.support.services import BROKER_URL, LOOPBACK_POLICY, Pipeline, fast_settings


def claim(conn: psycopg.Connection[Any], num: int) -> tuple[Any, Any]:
    row = conn.execute(
        "SELECT claim_job, claim_holder FROM apievents.subscription WHERE subscription_num = %s",
        (num,),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def queued(prefix: str) -> int:
    with kombu.Connection(BROKER_URL) as c:
        return int(c.default_channel.queue_declare(f"{prefix}.jobs", passive=True).message_count)


def test_a_receiver_trickling_its_answer_is_cut_at_the_deadline(
    database_url: str, prefix: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    # Each byte arrives well within the answer timeout, but the whole answer takes ~12 s:
    # longer than the lease. The POST must end at its deadline, before the lease does.
    receiver.behaviours["/t"] = lambda n: Trickle(0.05) if n == 0 else 200
    num = subscribe(conn, receiver.url("/t"))
    keys = insert_appointments(conn, 3)
    settings = fast_settings(
        database_url, prefix, http_timeout=1, http_connect_timeout=0.5, lease_seconds=2.5
    )
    p = Pipeline(settings).start_all(workers=2)
    try:
        wait_for(lambda: caught_up(conn, num, keys), 30, "delivery after the cut POST")
    finally:
        p.stop_all()
    assert receiver.overlapping("/t") == []
    first = subscriptions.attempts(conn, num)[-1]
    assert first["ErrorClass"] == "timeout"
    assert first["LatencyMs"] < 2500


def test_a_redelivered_job_never_takes_over_a_live_claim(
    conn: psycopg.Connection[Any],
    pipeline: Pipeline,
    receiver: Receiver,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    num = subscribe(conn, receiver.url())
    keys = insert_appointments(conn, 2)
    (job,) = claim_due(conn, 10, 3.0, timedelta(0)).jobs
    holder = new_id()  # a worker that holds the claim and is, as far as we know, sending
    conn.execute(
        "UPDATE apievents.subscription SET claim_holder = %s WHERE subscription_num = %s",
        (holder, num),
    )
    caplog.set_level(logging.INFO)
    pipeline.start("worker")
    pipeline.start("committer")
    publish(prefix, [job.to_bytes()], JOBS)  # the broker hands the job on again
    wait_for(
        lambda: any(r.getMessage() == "claim_busy" for r in caplog.records),
        30,
        "the worker to see the live claim",
    )
    assert receiver.batches() == []
    assert tuple(map(str, claim(conn, num))) == (job.job_id, holder)  # the holder keeps it
    pipeline.start("producer")  # its lease runs out; then the window is issued again
    wait_for(lambda: caught_up(conn, num, keys), 30, "delivery after the lease")
    assert [r["AptNum"] for r in receiver.delivered()] == keys


@pytest.mark.parametrize(
    "edit",
    [
        {"note": "an edit that changes nothing about delivery"},
        {"polling_seconds": 2},
        {"endpoint_url": "/e2"},
        {"date_time_start": "rewind"},
    ],
    ids=["note", "polling", "endpoint", "rewind"],
)
def test_an_edit_mid_post_never_starts_a_second_post(
    edit: dict[str, Any],
    database_url: str,
    prefix: str,
    conn: psycopg.Connection[Any],
    receiver: Receiver,
) -> None:
    receiver.behaviours["/e"] = lambda n: sleep_then(1.5)(n) if n == 0 else 200
    num = subscribe(conn, receiver.url("/e"))
    start = state(conn, num)["DateTimeStart"]
    keys = insert_appointments(conn, 3)
    p = Pipeline(fast_settings(database_url, prefix, lease_seconds=10)).start_all(workers=2)
    try:
        wait_for(lambda: receiver.active("/e") == 1, 30, "the first POST in flight")
        if edit.get("date_time_start") == "rewind":
            subscriptions.rewind(conn, num, start)
        else:
            values = {k: receiver.url(v) if k == "endpoint_url" else v for k, v in edit.items()}
            subscriptions.update(conn, num, values, LOOPBACK_POLICY)
        wait_for(lambda: caught_up(conn, num, keys), 30, "the window after the edit")
    finally:
        p.stop_all()
    assert receiver.overlapping("/e", "/e2") == []
    got = {r["AptNum"] for r in receiver.delivered("/e") + receiver.delivered("/e2")}
    assert got == set(keys)


def test_a_publish_whose_confirm_times_out_keeps_its_claim(
    database_url: str,
    prefix: str,
    conn: psycopg.Connection[Any],
    pipeline: Pipeline,
    receiver: Receiver,
) -> None:
    # The broker may have routed a job whose confirm did not come in time: its claim must stay,
    # or the window would be issued twice and sent by two workers at once. A confirm timeout
    # of 0 makes every publish time out, though RabbitMQ routes every job.
    num = subscribe(conn, receiver.url())
    keys = insert_appointments(conn, 2)
    settings = fast_settings(database_url, prefix)
    lifecycle = Lifecycle()
    config = replace(ProducerConfig.from_settings(settings), confirm_timeout=0)
    with db.pool(database_url, 2, "test-producer") as pool:
        producer = threading.Thread(target=Producer(config, pool, lifecycle).run)
        producer.start()
        try:
            wait_for(lambda: claim(conn, num)[0] is not None, 30, "a claim")
            job = claim(conn, num)[0]
            stays(lambda: claim(conn, num)[0] == job, 1.5, "the claim of the published job")
            assert queued(prefix) == 1
        finally:
            lifecycle.stop.set()
            producer.join(30)
    # The published job's window may end just before the rows (the window end keeps a margin
    # behind the clock): a producer then issues the next window, once the first one is done.
    pipeline.start_all()
    wait_for(lambda: caught_up(conn, num, keys), 30, "delivery of the one job")
    assert len(receiver.batches()) == 1


def test_the_producer_keeps_heartbeats_flowing_while_idle(
    database_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    p = Pipeline(fast_settings(database_url, prefix, broker_heartbeat=1, tick_seconds=0.5))
    p.start("producer")
    try:
        # Several heartbeat periods with nothing to publish: the connection must stay up.
        stays(lambda: not [r for r in caplog.records if r.getMessage() == "reconnecting"], 6)
    finally:
        p.stop_all()


def test_a_first_post_after_a_wait_for_a_slot_never_outlives_its_lease(
    database_url: str, prefix: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    # The smallest lease settings accept (just over the POST deadline): a window that waited
    # for a POST slot must extend its lease before its first POST, or the lease runs out
    # mid-POST and the producer re-issues the window to another worker.
    settings = fast_settings(
        database_url,
        prefix,
        lease_seconds=10,
        http_timeout=8,
        http_connect_timeout=1,
        worker_concurrency=1,
        worker_batch=1,
    )
    order = iter(range(100))
    lock = threading.Lock()
    first: dict[str, int] = {}

    def behave_for(path: str) -> Any:
        def behave(n: int) -> int:
            if n == 0:
                with lock:
                    first[path] = k = next(order)
                if k == 0:
                    time.sleep(2.3)  # holds the worker's only POST slot
                elif k == 1:
                    time.sleep(8.5)  # within the POST deadline, longer than the lease left
            return 200

        return behave

    nums = []
    for i in range(6):
        receiver.behaviours[f"/s{i}"] = behave_for(f"/s{i}")
        nums.append(subscribe(conn, receiver.url(f"/s{i}")))
    keys = insert_appointments(conn, 3)
    p = Pipeline(settings)
    p.start("committer")
    p.start("w1", "worker")  # its prefetch takes the first jobs
    time.sleep(1.0)
    p.start("producer")
    try:
        wait_for(lambda: len(first) >= 2, 15, "the second window's first POST")
        for name in ("w2", "w3", "w4"):  # room for any re-issued job
            p.start(name, "worker")
        wait_for(lambda: all(caught_up(conn, n, keys) for n in nums), 60, "every window")
    finally:
        p.stop_all()
    assert {path: receiver.overlapping(path) for path in receiver.behaviours} == {
        path: [] for path in receiver.behaviours
    }


def test_a_worker_stopped_mid_post_leaves_the_claim_until_the_lease_ends(
    database_url: str, prefix: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    # The worker gives up the POST at its shutdown timeout, but the receiver is still working
    # on it: handing the claim back at once would let another worker POST beside it.
    settings = fast_settings(
        database_url, prefix, lease_seconds=12, http_timeout=10, shutdown_timeout=1
    )
    receiver.behaviours["/h"] = lambda n: sleep_then(6)(n) if n == 0 else 200
    num = subscribe(conn, receiver.url("/h"))
    keys = insert_appointments(conn, 3)
    p = Pipeline(settings)
    p.start("producer")
    p.start("committer")
    p.start("w1", "worker")
    try:
        wait_for(lambda: receiver.active("/h") == 1, 15, "the first POST")
        p.start("w2", "worker")
        threading.Thread(target=p.stop, args=("w1",), daemon=True).start()
        wait_for(lambda: caught_up(conn, num, keys), 60, "delivery by the other worker")
    finally:
        p.stop_all()
    assert receiver.overlapping("/h") == []
