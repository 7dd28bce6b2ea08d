"""Applying outcomes to subscriptions: compare-and-set on the claim, one transaction a batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from apievents.common import queries
from apievents.common.messages import Checkpoint, Outcome, Report
from apievents.common.retry import RetryPolicy

ADVANCED, FAILED, STALE, CHECKPOINT, RELEASED = (
    "advanced",
    "failed",
    "stale",
    "checkpoint",
    "released",  # the claim was revoked by an edit: dropped, the watermark untouched
)

Claim = tuple[int, str, str]  # subscription, job, holder


def apply_batch(
    conn: psycopg.Connection[Any],
    reports: Sequence[Report],
    policy: RetryPolicy,
    disable_after: float = 259200.0,
) -> list[str]:
    """Apply every report in one transaction and one round trip; a result per report.

    Only the claim's current holder (job id and holder id) moves DateTimeStart, and only while
    no edit revoked the claim: to the window end on success, to the position of the last row
    answered 200 on a checkpoint or on a failure after progress. Successes, the common case,
    go in one statement for the whole batch; so do the attempt-log rows.
    """
    successes = [r for r in reports if isinstance(r, Outcome) and r.ok]
    finals = [r for r in reports if isinstance(r, Outcome)]
    others = [r for r in reports if not (isinstance(r, Outcome) and r.ok)]
    with conn.transaction(), conn.pipeline():
        advanced = conn.execute(queries.COMMIT_SUCCESSES, _successes(successes))
        cursors = {id(r): conn.execute(*_statement(r, policy, disable_after)) for r in others}
        released = conn.execute(queries.RELEASE_REVOKED, _claims(finals))
        attempts = _attempts(reports)
        if attempts:  # the POSTs happened whatever became of the report
            conn.execute(queries.RECORD_ATTEMPTS, {"attempts": queries.rows(attempts)})
    done = {tuple(row) for row in advanced.fetchall()}
    revoked = {tuple(row) for row in released.fetchall()}
    results = []
    for r in reports:
        if id(r) in cursors:
            applied = cursors[id(r)].rowcount == 1
            result = (CHECKPOINT if isinstance(r, Checkpoint) else FAILED) if applied else STALE
        else:
            result = ADVANCED if _claim(r) in done else STALE
            done.discard(_claim(r))  # a duplicate in the same batch is stale
        if result == STALE and isinstance(r, Outcome) and _claim(r) in revoked:
            result = RELEASED
        results.append(result)
    return results


def _claim(r: Report) -> Claim:
    return (r.subscription, r.job_id, r.holder)


def _claim_row(o: Outcome) -> dict[str, Any]:
    return {"num": o.subscription, "job": o.job_id, "holder": o.holder}


def _claims(outcomes: Sequence[Outcome]) -> dict[str, str]:
    return {"claims": queries.rows([_claim_row(o) for o in outcomes])}


def _successes(outcomes: Sequence[Outcome]) -> dict[str, str]:
    return {
        "outcomes": queries.rows(
            [
                _claim_row(o) | {"window_end": o.window_end, "http_status": o.http_status}
                for o in outcomes
            ]
        )
    }


def _attempts(reports: Sequence[Report]) -> list[dict[str, Any]]:
    """The attempt-log rows of the reports (each attempt's own fields, and its window)."""
    found = []
    for r in reports:
        if r.window_start is None or r.window_end is None:
            continue  # a checkpoint from before checkpoints carried their attempts
        window = {"num": r.subscription, "window_start": r.window_start, "window_end": r.window_end}
        found += [window | a for a in r.attempts]
    return found


def _statement(r: Report, policy: RetryPolicy, disable_after: float) -> tuple[str, dict[str, Any]]:
    claim = {"num": r.subscription, "job": r.job_id, "holder": r.holder}
    if isinstance(r, Checkpoint):
        return queries.COMMIT_CHECKPOINT, claim | {
            "position_ts": r.position_ts,
            "position_key": r.position_key,
            "seq": r.seq,
        }
    return queries.COMMIT_FAILURE, claim | {
        "error": r.error or r.error_class or "failed",
        "error_class": r.error_class or "error",
        "http_status": r.http_status,
        "delay": policy.delay(r.failures + 1, r.retry_after),
        "gone": r.http_status == 410,
        "disable_after": disable_after,
        "progress": r.position_ts is not None,
        "position_ts": r.position_ts,
        "position_key": r.position_key,
        "retry_after": min(r.retry_after or 0.0, policy.cap),
    }
