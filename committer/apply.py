"""Applying outcomes to subscriptions: compare-and-set on the claim, one transaction a batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from apievents.common import queries
from apievents.common.messages import Checkpoint, Outcome
from apievents.common.retry import RetryPolicy

ADVANCED, FAILED, STALE, CHECKPOINT = "advanced", "failed", "stale", "checkpoint"


def apply_batch(
    conn: psycopg.Connection[Any],
    outcomes: Sequence[Outcome | Checkpoint],
    policy: RetryPolicy,
    disable_after: float = 259200.0,
) -> list[str]:
    """Apply every report in one transaction; returns advanced, failed, checkpoint or stale.

    Only the claim's current holder (job id and holder id) moves DateTimeStart: to the window
    end on success, to a checkpoint's position on progress. A failure never touches it.
    """
    attempts = [
        a | {"num": o.subscription, "window_start": o.window_start, "window_end": o.window_end}
        for o in outcomes
        if isinstance(o, Outcome)
        for a in o.attempts
    ]
    with conn.transaction(), conn.pipeline():
        cursors = [conn.execute(*_statement(o, policy, disable_after)) for o in outcomes]
        if attempts:  # the POSTs happened whatever became of the outcome
            conn.cursor().executemany(queries.RECORD_ATTEMPT, attempts)
    return [
        _result(o) if cur.rowcount == 1 else STALE for o, cur in zip(outcomes, cursors, strict=True)
    ]


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
        "http_status": o.http_status,
        "delay": policy.delay(o.failures + 1, o.retry_after),
        "gone": o.http_status == 410,
        "disable_after": disable_after,
    }
