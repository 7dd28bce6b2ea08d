"""Windows in batches: one take-over, shared table reads, and isolation between windows."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from apievents.common.topology import JOBS
from apievents.producer.claim import claim_due
from apievents.worker import reads
from tests.integration.conftest import caught_up, date_time_start, insert_appointments, subscribe
from tests.integration.test_broker import publish
from tests.integration.test_single_flight import queued
from tests.support import wait_for
from tests.support.receiver import Receiver, sleep_then
from tests.support.services import Pipeline, fast_settings


def stamps(conn: psycopg.Connection[Any], keys: list[int]) -> list[Any]:
    cur = conn.execute(
        "SELECT datetstamp FROM appointment WHERE aptnum = ANY(%s) ORDER BY aptnum", (keys,)
    )
    return [r[0] for r in cur.fetchall()]


def test_a_stale_claim_in_a_batch_is_dropped_and_the_rest_delivered(
    conn: psycopg.Connection[Any],
    prefix: str,
    pipeline: Pipeline,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    nums = [subscribe(conn, receiver.url(f"/b{i}")) for i in range(3)]
    keys = insert_appointments(conn, 4)
    jobs = claim_due(conn, 10, 60, timedelta(0)).jobs
    assert sorted(j.subscription for j in jobs) == nums
    stale = nums[1]  # its window was issued again under another job: this one moved on
    conn.execute(
        "UPDATE apievents.subscription SET claim_job = %s WHERE subscription_num = %s",
        (str(uuid.uuid4()), stale),
    )
    caplog.set_level(logging.INFO)
    pipeline.start("worker")
    pipeline.start("committer")
    publish(prefix, [j.to_bytes() for j in jobs], JOBS)  # one burst: one batch
    for i in (0, 2):
        wait_for(lambda i=i: caught_up(conn, nums[i], keys), 30, f"subscription {i}")  # type: ignore[misc]
        assert [r["AptNum"] for r in receiver.delivered(f"/b{i}")] == keys
    wait_for(lambda: any(r.getMessage() == "job_stale" for r in caplog.records), 10)
    assert receiver.batches("/b1") == []


def test_a_shared_read_gives_each_window_exactly_its_own_rows(
    conn: psycopg.Connection[Any],
    database_url: str,
    prefix: str,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from apievents.common.messages import jobs_to_bytes

    keys = insert_appointments(conn, 10, one_transaction=False)  # ten distinct DateTStamps
    third = stamps(conn, keys)[2]
    behind = subscribe(conn, receiver.url("/behind"), date_time_start="2020-01-01T00:00:00Z")
    ahead = subscribe(conn, receiver.url("/ahead"), date_time_start=third.isoformat())
    jobs = claim_due(conn, 10, 60, timedelta(0)).jobs  # both windows, issued together
    assert sorted(j.subscription for j in jobs) == [behind, ahead]
    splits: list[set[int]] = []
    real = reads.split

    def watched(read: reads.SharedRead, found: Any, limit: int) -> Any:
        splits.append({j.subscription for j in read.jobs})
        return real(read, found, limit)

    monkeypatch.setattr(reads, "split", watched)
    p = Pipeline(fast_settings(database_url, prefix, worker_linger_seconds=0.3))
    p.start("worker")
    p.start("committer")
    try:
        publish(prefix, [jobs_to_bytes(jobs)], JOBS)  # one message: one batch
        wait_for(lambda: caught_up(conn, behind, keys) and caught_up(conn, ahead, keys), 30)
    finally:
        p.stop_all()
    assert [r["AptNum"] for r in receiver.delivered("/behind")] == keys
    assert [r["AptNum"] for r in receiver.delivered("/ahead")] == keys[3:]
    assert {behind, ahead} in splits  # one read served both windows


def test_a_hanging_endpoint_in_a_batch_delays_no_other_window(
    database_url: str, prefix: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    receiver.behaviours["/hang"] = sleep_then(6)
    hanging = subscribe(conn, receiver.url("/hang"))
    healthy = [subscribe(conn, receiver.url(f"/ok{i}")) for i in range(5)]
    start = date_time_start(conn, hanging)
    keys = insert_appointments(conn, 2)
    settings = fast_settings(
        database_url, prefix, http_timeout=10, lease_seconds=15, worker_linger_seconds=0.3
    )
    p = Pipeline(settings).start_all()
    try:
        wait_for(lambda: receiver.active("/hang") == 1, 30, "the hanging POST")
        # Every healthy outcome is applied while the hanging POST is still in flight.
        for num in healthy:
            wait_for(lambda num=num: caught_up(conn, num, keys), 5, f"subscription {num}")  # type: ignore[misc]
        assert receiver.active("/hang") == 1
        # its outcome is not applied yet (an empty window before the rows may have been)
        assert start <= date_time_start(conn, hanging) < min(stamps(conn, keys))
        wait_for(lambda: caught_up(conn, hanging, keys), 30, "the slow one, in the end")
    finally:
        p.stop_all()


def one_producer_tick(database_url: str, prefix: str, **settings: Any) -> int:
    """One tick of a producer, and the publishing of its jobs; how many jobs it issued."""
    import asyncio

    from apievents.common import broker, db
    from apievents.common.lifecycle import Lifecycle
    from apievents.producer.service import Producer, ProducerConfig

    config = ProducerConfig.from_settings(fast_settings(database_url, prefix, **settings))

    async def tick(producer: Producer) -> int:
        session = await broker.connect(config.broker_url, prefix)
        try:
            claimed = producer.tick()
            await producer.publish(session, claimed.jobs)
            return len(claimed.jobs)
        finally:
            await session.close()

    with db.pool(database_url, 2, "test-producer") as pool:
        return asyncio.run(tick(Producer(config, pool, Lifecycle())))


def queued_bodies(prefix: str) -> list[bytes]:
    """Every message waiting in the jobs queue, taken off it."""
    import kombu

    from tests.support.services import BROKER_URL

    bodies = []
    with kombu.Connection(BROKER_URL) as c:
        while (message := c.default_channel.basic_get(f"{prefix}.jobs", no_ack=True)) is not None:
            bodies.append(message.body)
    return bodies


def test_the_producer_claims_and_publishes_10000_due_subscriptions_in_one_tick(
    conn: psycopg.Connection[Any], database_url: str, prefix: str
) -> None:
    from apievents.common.messages import parse_jobs

    conn.execute(
        "INSERT INTO apievents.subscription (endpoint_url, watch_table, polling_seconds, "
        "date_time_start, secret) SELECT 'http://127.0.0.1:9/' || g, 'Appointment', 1, "
        "now() - interval '1 minute', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw' "
        "FROM generate_series(1, 10000) g"
    )
    insert_appointments(conn, 1)
    assert one_producer_tick(database_url, prefix) == 10_000
    subs = [j.subscription for b in queued_bodies(prefix) for j in parse_jobs(b)]
    assert len(set(subs)) == len(subs) == 10_000


@pytest.mark.parametrize("per_message", [1, 4])
def test_the_producer_packs_jobs_into_messages_and_one_a_message_in_the_old_form(
    per_message: int, conn: psycopg.Connection[Any], database_url: str, prefix: str
) -> None:
    """With APIEVENTS_JOBS_PER_MESSAGE=1 every message is a single job, which workers of a
    version before several-job messages read: the setting for a rolling upgrade."""
    from apievents.common.messages import Job, parse_jobs

    nums = [subscribe(conn, f"http://127.0.0.1:9/{i}") for i in range(10)]
    insert_appointments(conn, 1)
    assert one_producer_tick(database_url, prefix, jobs_per_message=per_message) == 10
    bodies = queued_bodies(prefix)
    assert sorted(j.subscription for b in bodies for j in parse_jobs(b)) == nums
    assert [len(parse_jobs(b)) for b in bodies] == ([1] * 10 if per_message == 1 else [4, 4, 2])
    if per_message == 1:
        assert sorted(Job.from_bytes(b).subscription for b in bodies) == nums


def test_a_producer_next_to_workers_that_read_one_window_a_message_falls_back_to_that(
    conn: psycopg.Connection[Any],
    database_url: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A producer upgraded before its workers: they dead-letter messages of several windows.
    The producer sees the dead letters grow and sends one window a message, and the rejected
    windows are issued again, one a message, when their leases run out."""
    import threading

    import kombu

    from apievents.common.messages import Job, MessageError
    from apievents.producer import service as producer_service
    from tests.support.services import BROKER_URL

    monkeypatch.setattr(producer_service, "LAG_INTERVAL", 0.2)  # how often it looks
    caplog.set_level(logging.WARNING)
    pipeline = Pipeline(fast_settings(database_url, prefix, lease_seconds=4))
    pipeline.start("producer")
    singles: set[int] = set()
    rejected: list[bytes] = []
    done = threading.Event()

    def older_worker() -> None:  # reads one job a message, as workers did before
        def on_message(body: Any, message: Any) -> None:
            try:
                singles.add(Job.from_bytes(message.body).subscription)
                message.ack()
            except MessageError:
                rejected.append(message.body)
                message.reject()  # dead-lettered

        with kombu.Connection(BROKER_URL) as c:
            queue = kombu.Queue(f"{prefix}.jobs", no_declare=True)
            with c.Consumer(queue, callbacks=[on_message], accept=None):
                while not done.is_set():
                    with contextlib.suppress(TimeoutError):
                        c.drain_events(timeout=0.1)

    def declared() -> bool:
        try:
            return queued(prefix) == 0
        except Exception:  # not declared yet
            return False

    wait_for(declared, 10, "the producer's topology")
    time.sleep(0.5)  # its first look at the dead letters
    thread = threading.Thread(target=older_worker, daemon=True)
    thread.start()
    try:
        insert_appointments(conn, 1)
        with conn.transaction():  # due together, with rows to send: one message of six
            nums = [
                subscribe(conn, f"http://127.0.0.1:9/{i}", date_time_start="2020-01-01T00:00:00Z")
                for i in range(6)
            ]
        wait_for(lambda: rejected, 10, "a message of several windows dead-lettered")
        wait_for(lambda: singles == set(nums), 30, "every window again, one a message")
    finally:
        done.set()
        thread.join(10)
        pipeline.stop_all()
    assert any("dead_lettered" in r.getMessage() for r in caplog.records)
