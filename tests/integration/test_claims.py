"""Claims, leases and compare-and-set: late, duplicate or lost messages never lose a change."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import psycopg

from apievents.committer.apply import ADVANCED, FAILED, STALE, apply_batch
from apievents.common import registry
from apievents.common.messages import Outcome, new_id
from apievents.common.retry import RetryPolicy
from apievents.producer.claim import Claimed
from apievents.producer.claim import claim_due as _claim_due
from tests.integration.conftest import date_time_start, insert_appointments, state, subscribe
from tests.support import wait_for
from tests.support.receiver import Receiver
from tests.support.services import Pipeline

POLICY = RetryPolicy(0.2, 1)


def claim_due(conn: psycopg.Connection[Any], limit: int, lease: float) -> tuple[int, list[Any]]:
    claimed: Claimed = _claim_due(conn, limit, lease, timedelta(0))
    return claimed.due, claimed.jobs


def take_over(conn: psycopg.Connection[Any], job_id: str, num: int) -> str:
    holder = new_id()
    conn.execute(
        "UPDATE apievents.subscription SET claim_holder = %s "
        "WHERE subscription_num = %s AND claim_job = %s",
        (holder, num, job_id),
    )
    return holder


def claimed_window(conn: psycopg.Connection[Any]) -> tuple[int, Any, Any, str]:
    """A subscription with one change, claimed by the producer and taken over by a worker."""
    num = subscribe(conn, "http://127.0.0.1:9/")
    start = date_time_start(conn, num)
    insert_appointments(conn, 1)
    (job,) = claim_due(conn, 100, 60)[1]
    return num, start, job, take_over(conn, job.job_id, num)


def failure(job: Any, holder: str, **answer: Any) -> Outcome:
    return Outcome(
        job.job_id,
        holder,
        job.subscription,
        job.window_start,
        job.window_end,
        job.failures,
        ok=False,
        **answer,
    )


def success(job: Any, holder: str) -> Outcome:
    return Outcome(
        job.job_id,
        holder,
        job.subscription,
        job.window_start,
        job.window_end,
        job.failures,
        ok=True,
        http_status=200,
    )


def test_one_window_per_subscription_in_flight(conn: psycopg.Connection[Any]) -> None:
    num = subscribe(conn, "http://127.0.0.1:9/")
    insert_appointments(conn, 1)
    _, jobs = claim_due(conn, 100, 60)
    assert [j.subscription for j in jobs] == [num]
    insert_appointments(conn, 1)
    conn.execute("UPDATE apievents.subscription SET next_attempt_at = now()")
    assert claim_due(conn, 100, 60) == (0, [])  # claimed: not due again while the lease lives


def test_success_moves_the_watermark_once_and_stale_outcomes_never(
    conn: psycopg.Connection[Any],
) -> None:
    num, start, job, holder = claimed_window(conn)
    outcome = success(job, holder)
    stranger = success(job, new_id())  # an older holder of the same job
    assert apply_batch(conn, [stranger], POLICY) == [STALE]
    assert date_time_start(conn, num) == start
    assert apply_batch(conn, [outcome, outcome], POLICY) == [ADVANCED, STALE]  # duplicate
    assert date_time_start(conn, num) == job.window_end
    # A redelivered failure of the finished job cannot drag the subscription back either.
    late = failure(job, holder, http_status=500, error="HTTP 500")
    assert apply_batch(conn, [late], POLICY) == [STALE]
    assert state(conn, num)["ConsecutiveFailures"] == 0


def test_failure_backs_off_and_keeps_the_watermark(conn: psycopg.Connection[Any]) -> None:
    num, start, job, holder = claimed_window(conn)
    failed = failure(
        job, holder, http_status=503, error_class="http_error", error="HTTP 503", retry_after=30
    )
    assert apply_batch(conn, [failed], POLICY) == [FAILED]
    s = state(conn, num)
    assert (s["ConsecutiveFailures"], s["LastHttpStatus"], s["LastError"]) == (1, 503, "HTTP 503")
    assert date_time_start(conn, num) == start
    (delay,) = conn.execute(
        "SELECT next_attempt_at - now() FROM apievents.subscription WHERE subscription_num = %s",
        (num,),
    ).fetchone()  # type: ignore[misc]
    assert timedelta(seconds=0.9) <= delay <= timedelta(seconds=1.1)  # Retry-After, capped


def test_idle_subscriptions_produce_no_job(conn: psycopg.Connection[Any]) -> None:
    num = subscribe(conn, "http://127.0.0.1:9/")
    before = date_time_start(conn, num)
    claimed = _claim_due(conn, 100, 60, timedelta(0))
    assert (claimed.due, claimed.jobs) == (1, [])
    assert claim_due(conn, 100, 60) == (0, [])  # rescheduled PollingSeconds ahead
    # Nothing was owed up to the window end, so DateTimeStart moved there (as Open Dental's
    # does on every poll), which tells a live subscription from a stuck one.
    assert before < date_time_start(conn, num) == claimed.horizon.end


def test_an_idle_subscription_start_advances_on_each_poll(
    conn: psycopg.Connection[Any], pipeline: Pipeline
) -> None:
    num = subscribe(conn, "http://127.0.0.1:9/")  # nothing ever changes: never a POST
    pipeline.start_all()
    seen = [date_time_start(conn, num)]
    for _ in range(3):
        wait_for(lambda: date_time_start(conn, num) > seen[-1], 10, "the next poll")
        seen.append(date_time_start(conn, num))
    assert state(conn, num)["LastAttempt"] is None  # no window was issued
    assert claim_due(conn, 100, 60)[1] == []


def polls(conn: psycopg.Connection[Any], nums: list[int]) -> list[tuple[Any, Any]]:
    """(next_attempt_at, subscription_num) of each subscription, while none is claimed."""
    rows = conn.execute(
        "SELECT next_attempt_at, subscription_num FROM apievents.subscription "
        "WHERE subscription_num = ANY(%s) AND claim_job IS NULL ORDER BY subscription_num",
        (nums,),
    ).fetchall()
    return [tuple(r) for r in rows]


def assert_spread(conn: psycopg.Connection[Any], nums: list[int], period: float) -> None:
    """Next polls at distinct phases of the period (ticks are 0.05 s: no two in one tick),
    none more than a period ahead."""
    nexts = [t for t, _ in polls(conn, nums)]
    phases = sorted(t.timestamp() % period for t in nexts)
    assert min(b - a for a, b in itertools.pairwise(phases)) > 0.2, phases
    now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    assert all(t - now <= timedelta(seconds=period) for t in nexts)


def test_subscriptions_created_together_poll_at_their_own_phases(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    # Created together (or all freed together by a restart), they would otherwise poll
    # together forever: one burst of windows a period, and the last in it waits longest.
    period = 4
    nums = [subscribe(conn, receiver.url(), polling_seconds=period) for _ in range(8)]
    insert_appointments(conn, 1)
    pipeline.start_all()
    wait_for(lambda: len(receiver.delivered()) == 8, 30, "a delivery to each")
    wait_for(lambda: len(polls(conn, nums)) == 8, 30, "every claim released")
    assert_spread(conn, nums, period)  # as rescheduled after a delivery
    delivered = {t for t, _ in polls(conn, nums)}
    wait_for(
        lambda: len(polls(conn, nums)) == 8 and not delivered & {t for t, _ in polls(conn, nums)},
        3 * period,
        "an idle poll of each",
    )
    assert_spread(conn, nums, period)  # as rescheduled by a poll that found nothing


def test_expired_subscription_sends_nothing(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    past = subscribe(
        conn,
        receiver.url("/old"),
        date_time_start="2020-01-01T00:00:00Z",
        date_time_stop="2020-06-01T00:00:00Z",
    )
    live = subscribe(conn, receiver.url("/live"))
    insert_appointments(conn, 5)
    # Its stop has passed, but it shows expired only once its watermark reached the stop: it
    # might still owe rows stamped before it.
    assert state(conn, past)["Status"] == "active"
    pipeline.start_all()
    wait_for(lambda: len(receiver.delivered("/live")) == 5, 30, "the live subscription")
    wait_for(lambda: state(conn, past)["Status"] == "expired", 30, "expired")
    assert state(conn, past)["DateTimeStart"] == "2020-06-01T00:00:00+00:00"
    assert receiver.batches("/old") == []
    assert state(conn, live)["Status"] == "active"


def test_lost_job_is_reissued_after_its_lease(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    num = subscribe(conn, receiver.url())
    keys = insert_appointments(conn, 3)
    # The producer claims, then dies before publishing: the job never reaches the broker.
    (job,) = claim_due(conn, 100, 1.0)[1]
    pipeline.start_all()
    wait_for(lambda: len(receiver.delivered()) == 3, 30, "re-issued window")
    assert [r["AptNum"] for r in receiver.delivered()] == keys
    wait_for(lambda: date_time_start(conn, num) > job.window_start, 30, "watermark")


def test_paused_subscription_waits_and_resumes_where_it_stopped(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    from apievents.common import subscriptions

    num = subscribe(conn, receiver.url())
    subscriptions.set_status(conn, num, "paused")
    keys = insert_appointments(conn, 4)
    pipeline.start_all()
    assert claim_due(conn, 100, 60) == (0, [])
    assert receiver.batches() == []
    subscriptions.set_status(conn, num, "active")
    wait_for(lambda: len(receiver.delivered()) == 4, 30, "delivery after resume")
    assert [r["AptNum"] for r in receiver.delivered()] == keys


def test_unserializable_row_backs_off_without_crashing(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    conn.execute(
        "CREATE TABLE scan (id bigint PRIMARY KEY, image bytea, "
        "stamp timestamptz NOT NULL DEFAULT now())"
    )
    registry.add(conn, "Scan", "scan", "id", "stamp", stamped_by_application=True)
    bad = subscribe(conn, receiver.url("/scan"), watch_table="Scan")
    good = subscribe(conn, receiver.url())
    conn.execute("INSERT INTO scan VALUES (1, '\\x00ff')")
    pipeline.start_all()
    wait_for(lambda: state(conn, bad)["ConsecutiveFailures"] >= 2, 30, "backoff")
    assert "bytes" in state(conn, bad)["LastError"]
    insert_appointments(conn, 2)
    wait_for(lambda: len(receiver.delivered()) == 2, 30, "other subscriptions still flow")
    assert state(conn, good)["LastError"] is None


def test_dropped_table_backs_off_without_crashing(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    conn.execute("CREATE TABLE gone (id bigint PRIMARY KEY, stamp timestamptz DEFAULT now())")
    registry.add(conn, "Gone", "gone", "id", "stamp", stamped_by_application=True)
    num = subscribe(conn, receiver.url("/gone"), watch_table="Gone")
    conn.execute("INSERT INTO gone VALUES (1)")
    conn.execute("DROP TABLE gone")
    subscribe(conn, receiver.url())
    pipeline.start_all()
    wait_for(lambda: state(conn, num)["ConsecutiveFailures"] >= 2, 30, "backoff")
    assert "UndefinedTable" in state(conn, num)["LastError"]
    insert_appointments(conn, 2)
    wait_for(lambda: len(receiver.delivered()) == 2, 30, "other subscriptions still flow")
