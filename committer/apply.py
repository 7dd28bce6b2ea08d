"""Applying outcomes to subscriptions: compare-and-set on the claim, one transaction a batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from apievents.common import queries
from apievents.common.messages import Checkpoint, Outcome
from apievents.common.retry import RetryPolicy

ADVANCED, FAILED, STALE, CHECKPOINT, RELEASED = (
    "advanced",
    "failed",
    "stale",
    "checkpoint",
    "released",  # the claim was revoked by an edit: dropped, the watermark untouched
)


def apply_batch(
    conn: psycopg.Connection[Any],
    outcomes: Sequence[Outcome | Checkpoint],
    policy: RetryPolicy,
    disable_after: float = 259200.0,
) -> list[str]:
    """Apply every report in one transaction; returns a result per report (see above).

    Only the claim's current holder (job id and holder id) moves DateTimeStart, and only while
    no edit revoked the claim: to the window end on success, to the position of the last row
    answered 200 on a checkpoint or on a failure after progress.
    """
    attempts = [
        a | {"num": o.subscription, "window_start": o.window_start, "window_end": o.window_end}
        for o in outcomes
        if isinstance(o, Outcome)
        for a in o.attempts
    ]
    finals = [o for o in outcomes if isinstance(o, Outcome)]
    with conn.transaction(), conn.pipeline():
        cursors = [conn.execute(*_statement(o, policy, disable_after)) for o in outcomes]
        if attempts:  # the POSTs happened whatever became of the outcome
            conn.cursor().executemany(queries.RECORD_ATTEMPT, attempts)
        revoked = conn.execute(queries.RELEASE_REVOKED, _claims(finals)) if finals else None
    released = {tuple(r) for r in revoked.fetchall()} if revoked else set()
    return [
        _result(o) if cur.rowcount == 1 else RELEASED if _claim(o) in released else STALE
        for o, cur in zip(outcomes, cursors, strict=True)
    ]


def _claim(o: Outcome | Checkpoint) -> tuple[int, str, str]:
    return (o.subscription, o.job_id, o.holder)


def _claims(outcomes: Sequence[Outcome]) -> dict[str, list[Any]]:
    return {
        "nums": [o.subscription for o in outcomes],
        "jobs": [o.job_id for o in outcomes],
        "holders": [o.holder for o in outcomes],
    }


def _result(o: Outcome | Checkpoint) -> str:
    if isinstance(o, Checkpoint):
        return CHECKPOINT
    return ADVANCED if o.ok else FAILED


def _statement(
    o: Outcome | Checkpoint, policy: RetryPolicy, disable_after: float
) -> tuple[str, dict[str, Any]]:
    claim = {"num": o.subscription, "job": o.job_id, "holder": o.holder}
    if isinstance(o, Checkpoint):
        return queries.COMMIT_CHECKPOINT, claim | {
            "position_ts": o.position_ts,
            "position_key": o.position_key,
            "seq": o.seq,
        }
    if o.ok:
        return queries.COMMIT_SUCCESS, claim | {
            "window_end": o.window_end,
            "http_status": o.http_status,
        }
    return queries.COMMIT_FAILURE, claim | {
        "error": o.error or o.error_class or "failed",
        "error_class": o.error_class,
        "http_status": o.http_status,
        "delay": policy.delay(o.failures + 1, o.retry_after),
        "gone": o.http_status == 410,
        "disable_after": disable_after,
        "progress": o.position_ts is not None,
        "position_ts": o.position_ts,
        "position_key": o.position_key,
        "retry_after": min(o.retry_after or 0.0, policy.cap),
    }
