"""No change is ever skipped: late commits, checkpoints, leases and out-of-order reports."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from apievents.committer.apply import CHECKPOINT, STALE, apply_batch
from apievents.common import metrics, queries
from apievents.common.messages import Checkpoint, Outcome, new_id
from apievents.common.retry import RetryPolicy
from apievents.common.settings import Settings
from apievents.worker import reads
from tests.integration.conftest import (
    caught_up,
    cursor,
    date_time_start,
    insert_appointments,
    state,
    subscribe,
)
from tests.support import wait_for
from tests.support.receiver import Receiver, sleep_then
from tests.support.services import Pipeline, connect, fast_settings


def naive_poll(conn: psycopg.Connection[Any], start: datetime) -> tuple[list[int], datetime]:
    """The seed's loop: window end = the server's now(), no bound for open transactions."""
    with conn.transaction():
        (end,) = conn.execute("SELECT now()").fetchone()  # type: ignore[misc]
        rows = conn.execute(
            "SELECT aptnum FROM appointment WHERE datetstamp > %s AND datetstamp <= %s "
            "ORDER BY datetstamp, aptnum",
            (start, end),
        ).fetchall()
    return [r[0] for r in rows], end


def test_naive_polling_loses_a_late_commit(database_url: str) -> None:
    """The reference implementation shows the hole our watermark bound closes."""
    with connect(database_url) as conn, connect(database_url) as writer:
        (start,) = conn.execute("SELECT now()").fetchone()  # type: ignore[misc]
        with writer.transaction():
            (late,) = writer.execute(
                "INSERT INTO appointment (note) VALUES ('late') RETURNING aptnum"
            ).fetchone()  # type: ignore[misc]
            (early,) = insert_appointments(conn, 1)
            seen, start = naive_poll(conn, start)
            assert seen == [early]
        seen_after, _ = naive_poll(conn, start)
        assert late not in seen + seen_after  # lost for good


def test_pipeline_delivers_a_late_commit(
    database_url: str, conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    num = subscribe(conn, receiver.url())
    metrics.WATERMARK_HOLD.set(0)
    pipeline.start_all()
    with connect(database_url) as writer, writer.transaction():
        (late,) = writer.execute(
            "INSERT INTO appointment (note) VALUES ('late') RETURNING aptnum"
        ).fetchone()  # type: ignore[misc]
        (stamp,) = writer.execute("SELECT now()").fetchone()  # type: ignore[misc]
        after = insert_appointments(conn, 2)
        # Let the producer look several times while the transaction stays open.
        wait_for(
            lambda: (REGISTRY.get_sample_value("apievents_watermark_hold_seconds") or 0) > 2.5,
            30,
            "the watermark held behind the open transaction",
        )
        assert date_time_start(conn, num) < stamp
        assert receiver.delivered() == []  # nothing after the open transaction went out
    wait_for(lambda: len(receiver.delivered()) == 3, 30, "everything after the commit")
    assert [r["AptNum"] for r in receiver.delivered()] == [late, *after]


def test_checkpoints_commit_progress_while_a_window_runs_and_keep_ties(
    database_url: str, prefix: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    # 100 rows sharing one DateTStamp, 10 per batch, a checkpoint every 3 batches. The 8th POST
    # hangs: while it does, batches 1-6 are already committed (a worker that died now would
    # resend from batch 7), with the key as the cursor inside the shared timestamp.
    release = threading.Event()
    receiver.behaviours["/c"] = lambda n: release.wait(30) and 200 if n == 7 else 200
    num = subscribe(conn, receiver.url("/c"))
    keys = insert_appointments(conn, 100)
    settings = fast_settings(
        database_url, prefix, batch_size=10, checkpoint_batches=3, http_timeout=20, lease_seconds=30
    )
    p = Pipeline(settings).start_all()
    try:
        wait_for(lambda: receiver.active("/c") == 1 and len(receiver.batches("/c")) == 7, 30)
        wait_for(lambda: cursor(conn, num) == str(keys[59]), 30, "the checkpoint after batch 6")
        release.set()
        wait_for(lambda: caught_up(conn, num, keys), 30, "the rest")
    finally:
        release.set()
        p.stop_all()
    assert [r["AptNum"] for r in receiver.delivered("/c")] == keys


def test_a_failure_after_progress_resends_from_the_first_unanswered_batch(
    database_url: str, prefix: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    # The same rows; the 8th POST fails once. The failed window keeps batches 1-7 (its last
    # row answered 200 is the cursor), so only batch 8 onwards goes again.
    receiver.behaviours["/c"] = lambda n: 500 if n == 7 else 200
    num = subscribe(conn, receiver.url("/c"))
    keys = insert_appointments(conn, 100)
    p = Pipeline(fast_settings(database_url, prefix, batch_size=10, checkpoint_batches=3))
    p.start_all()
    try:
        wait_for(lambda: state(conn, num)["LastHttpStatus"] == 500, 30, "the failure")
        assert cursor(conn, num) in (str(keys[69]), None)  # None: the retry already finished
        wait_for(lambda: caught_up(conn, num, keys), 30, "the rest")
    finally:
        p.stop_all()
    assert [r["AptNum"] for r in receiver.delivered("/c")] == keys
    assert state(conn, num)["ConsecutiveFailures"] == 0


def _short_lease(database_url: str, prefix: str, lease: float) -> Settings:
    """Batches of 10 under a lease of ``lease`` seconds and a POST deadline of 0.7 s."""
    return fast_settings(
        database_url,
        prefix,
        batch_size=10,
        lease_seconds=lease,
        http_timeout=0.5,
        http_connect_timeout=0.2,
    )


@pytest.mark.parametrize(
    ("lease", "rows"),
    [
        (1.0, 100),  # shorter than a POST deadline and a second: extended before every POST
        (3.0, 200),  # long enough to skip extensions for a while (claim reads), then extended
    ],
)
def test_a_window_longer_than_its_lease_extends_it_and_never_runs_twice(
    lease: float,
    rows: int,
    database_url: str,
    prefix: str,
    conn: psycopg.Connection[Any],
    receiver: Receiver,
) -> None:
    receiver.behaviours["/slow"] = sleep_then(0.25)
    num = subscribe(conn, receiver.url("/slow"))
    keys = insert_appointments(conn, rows)
    settings = _short_lease(database_url, prefix, lease)
    p = Pipeline(settings).start_all(workers=2)
    try:
        wait_for(lambda: caught_up(conn, num, keys), 30, "the window")
    finally:
        p.stop_all()
    # 10 (20) batches x 0.25 s outlive the 1 s (3 s) lease: it was extended, so no second job
    # ran (a second worker waits for the lease to run out).
    assert [r["AptNum"] for r in receiver.delivered("/slow")] == keys
    assert receiver.max_concurrent["/slow"] == 1


def _lease_left_at_each_batch(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver, prefix: str
) -> list[float]:
    """Run one 40-row window in batches of 10, each answered in 0.3 s, with a 3 s lease and a
    0.7 s POST deadline; the lease left (by the database's clock) as each batch arrives."""
    num = subscribe(conn, receiver.url("/lease"))
    keys = insert_appointments(conn, 40)
    left: list[float] = []

    def lease_left(n: int) -> int:
        with psycopg.connect(database_url, autocommit=True) as c:
            row = c.execute(
                "SELECT extract(epoch FROM claim_expires_at - clock_timestamp())"
                " FROM apievents.subscription WHERE subscription_num = %s",
                (num,),
            ).fetchone()
        left.append(float(row[0]) if row and row[0] is not None else -1.0)
        time.sleep(0.3)
        return 200

    receiver.behaviours["/lease"] = lease_left
    settings = _short_lease(database_url, prefix, 3.0)
    p = Pipeline(settings).start_all()
    try:
        wait_for(lambda: caught_up(conn, num, keys), 60, "the window")
    finally:
        p.stop_all()
    assert [r["AptNum"] for r in receiver.delivered("/lease")] == keys
    return left


def test_a_claim_check_that_returns_late_extends_the_lease_before_the_post(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    prefix: str,
    conn: psycopg.Connection[Any],
    receiver: Receiver,
) -> None:
    """The claim read takes 2.5 s, so the lease it judged long enough (3 s from the
    take-over) is not any more when it returns: the worker extends it before the POST, so
    every batch arrives with more than a POST deadline (0.7 s) of lease left."""
    slow = queries.CLAIM_HELD.replace("SELECT 1 FROM", "SELECT 1 FROM pg_sleep(2.5),", 1)
    monkeypatch.setattr(queries, "CLAIM_HELD", slow)
    left = _lease_left_at_each_batch(database_url, conn, receiver, prefix)
    assert len(left) == 4 and min(left) > 0.7, left


def test_a_slow_take_over_counts_against_the_lease(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    prefix: str,
    conn: psycopg.Connection[Any],
    receiver: Receiver,
) -> None:
    """The take-over's transaction (with the shared reads) takes 1.5 s: the lease it set
    started at its beginning, and the worker counts from there, not from when it was done."""
    shared = reads.run_shared

    async def slow_shared(c: Any, *args: Any) -> Any:
        await c.execute("SELECT pg_sleep(1.5)")
        return await shared(c, *args)

    monkeypatch.setattr(reads, "run_shared", slow_shared)
    left = _lease_left_at_each_batch(database_url, conn, receiver, prefix)
    assert len(left) == 4 and min(left) > 0.7, left


def test_a_claim_read_that_finds_too_short_a_lease_extends_it_and_sends_every_row(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    prefix: str,
    conn: psycopg.Connection[Any],
    receiver: Receiver,
) -> None:
    """By the database's clock the lease is always too short here (the read finds no row):
    every batch then extends it, and the window goes on to its last row."""
    monkeypatch.setattr(queries, "CLAIM_HELD", queries.CLAIM_HELD + " AND false")
    num = subscribe(conn, receiver.url("/short"))
    keys = insert_appointments(conn, 30)
    p = Pipeline(fast_settings(database_url, prefix, batch_size=10)).start_all()
    try:
        wait_for(lambda: caught_up(conn, num, keys), 30, "the window")
    finally:
        p.stop_all()
    assert [r["AptNum"] for r in receiver.delivered("/short")] == keys
    assert state(conn, num)["ConsecutiveFailures"] == 0


def test_an_extension_that_comes_back_too_late_requeues_the_window_without_a_failure(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    prefix: str,
    conn: psycopg.Connection[Any],
    receiver: Receiver,
) -> None:
    """With a 1 s lease and a 0.7 s POST deadline every batch extends the lease; while each
    extension takes 0.4 s, what it leaves cannot cover a POST, so no batch goes out and no
    failure is counted (the database is slow, not the endpoint). Once it is quick again,
    every row arrives."""
    quick = queries.EXTEND_LEASE
    slow = quick.replace("\nWHERE", "\nFROM (SELECT pg_sleep(0.4)) AS pause\nWHERE", 1)
    monkeypatch.setattr(queries, "EXTEND_LEASE", slow)
    num = subscribe(conn, receiver.url("/slowdb"))
    keys = insert_appointments(conn, 20)
    settings = _short_lease(database_url, prefix, 1.0)
    p = Pipeline(settings).start_all()
    try:
        time.sleep(4)  # windows are taken over and requeued, again and again
        assert receiver.delivered("/slowdb") == []
        assert state(conn, num)["ConsecutiveFailures"] == 0
        monkeypatch.setattr(queries, "EXTEND_LEASE", quick)
        wait_for(lambda: caught_up(conn, num, keys), 30, "the window")
    finally:
        p.stop_all()
    assert [r["AptNum"] for r in receiver.delivered("/slowdb")] == keys
    assert state(conn, num)["ConsecutiveFailures"] == 0


def test_checkpoints_never_go_backwards_and_stale_ones_are_ignored(
    conn: psycopg.Connection[Any],
) -> None:
    from datetime import timedelta

    from apievents.producer.claim import claim_due

    num = subscribe(conn, "http://127.0.0.1:9/")
    keys = insert_appointments(conn, 30)
    (job,) = claim_due(conn, 10, 60, timedelta(0)).jobs
    holder = new_id()
    conn.execute("UPDATE apievents.subscription SET claim_holder = %s", (holder,))
    (ts,) = conn.execute("SELECT max(datetstamp) FROM appointment").fetchone()  # type: ignore[misc]
    policy = RetryPolicy()

    def cp(seq: int, key: int, who: str = holder) -> Checkpoint:
        return Checkpoint(job.job_id, who, num, seq, ts, str(key), 10 * seq)

    assert apply_batch(conn, [cp(2, keys[19]), cp(1, keys[9])], policy) == [CHECKPOINT, STALE]
    assert apply_batch(conn, [cp(3, keys[29], new_id())], policy) == [STALE]
    row = conn.execute("SELECT cursor_key FROM apievents.subscription").fetchone()
    assert row == (str(keys[19]),)
    done = Outcome(job.job_id, holder, num, job.window_start, job.window_end, 0, ok=True)
    assert apply_batch(conn, [done, cp(3, keys[29])], policy) == ["advanced", STALE]
    assert conn.execute(
        "SELECT date_time_start, cursor_key FROM apievents.subscription"
    ).fetchone() == (job.window_end, None)
