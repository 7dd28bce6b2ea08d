"""Applying outcomes to subscriptions: compare-and-set on the claim, one transaction a batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from common import queries
from common.messages import Outcome
from common.retry import RetryPolicy

ADVANCED, FAILED, STALE = "advanced", "failed", "stale"


def apply_batch(
    conn: psycopg.Connection[Any], outcomes: Sequence[Outcome], policy: RetryPolicy
) -> list[str]:
    """Apply every outcome in one transaction; returns advanced, failed or stale for each.

    Success moves DateTimeStart to the window end only while the outcome's job and holder still
    own the claim and DateTimeStart is still the window start; failure never touches it.
    """
    with conn.transaction(), conn.pipeline():
        cursors = [conn.execute(*_statement(o, policy)) for o in outcomes]
    return [
        (ADVANCED if o.ok else FAILED) if cur.rowcount == 1 else STALE
        for o, cur in zip(outcomes, cursors, strict=True)
    ]


def _statement(o: Outcome, policy: RetryPolicy) -> tuple[str, dict[str, Any]]:
    claim = {"num": o.subscription, "job": o.job_id, "holder": o.holder}
    if o.ok:
        return queries.COMMIT_SUCCESS, claim | {
            "window_start": o.window_start,
            "window_end": o.window_end,
            "http_status": o.http_status,
        }
    return queries.COMMIT_FAILURE, claim | {
        "error": o.error or o.error_class or "failed",
        "http_status": o.http_status,
        "delay": policy.delay(o.failures + 1, o.retry_after),
    }
