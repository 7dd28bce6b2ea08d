"""Taking over the claims of a batch of jobs: one statement for all of them.

The worker that starts a job becomes its claim's holder (a fresh holder id per start), and
learns where the window resumes and where and how its rows are sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
import psycopg

from apievents.common import queries
from apievents.common.messages import Job, new_id
from apievents.common.registry import WatchTable
from apievents.worker import signing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """A taken-over window: where it resumes, and where and how its rows are sent."""

    job: Job
    holder: str
    start: datetime
    cursor_key: str | None
    seq: int
    endpoint_url: str
    customer_key: str
    workstation: str
    secrets: tuple[str, ...]
    watch_table: WatchTable
    leased_at: float  # the loop's clock right before the take-over was sent: the database's
    # lease started no earlier

    @property
    def resumes_where_issued(self) -> bool:
        """True unless checkpoints moved the subscription since the job was issued."""
        return (self.start, self.cursor_key) == (self.job.window_start, self.job.after_key)

    def headers(self, body: bytes, default_workstation: str) -> dict[str, str]:
        """Open Dental's webhook headers plus the Standard Webhooks signature headers."""
        return {
            "Content-Type": "application/json",
            "Authorization": self.customer_key,
            "Workstation": self.workstation or default_workstation,
            "Event-Type": f"WatchTable: {self.watch_table.event_name}",
        } | signing.headers(self.job.subscription, body, self.secrets, int(time.time()))

    @property
    def claim(self) -> dict[str, Any]:
        """The claim's compare-and-set parameters."""
        return {"num": self.job.subscription, "job": self.job.job_id, "holder": self.holder}


def statement(jobs: Sequence[Job], lease: float) -> tuple[str, dict[str, Any], str]:
    """The take-over of ``jobs``: the SQL, its parameters, and the new holder of every job
    (fresh per take-over; with the job id it names a claim)."""
    holder = new_id()
    windows = [{"num": j.subscription, "job": j.job_id, "holder": holder} for j in jobs]
    params = {"lease": lease, "windows": queries.rows(windows)}
    return queries.TAKE_OVER, params, holder


def targets(
    rows: Sequence[Sequence[Any]], jobs: Sequence[Job], holder: str, leased_at: float
) -> dict[str, Target]:
    """The taken-over windows by job id, from the take-over's rows (which carry the registry
    row of each window's WatchTable); ``leased_at`` is when the take-over was sent."""
    by_id = {j.job_id: j for j in jobs}
    found = {}
    for row in rows:
        job_id, start, cursor, seq, url, ck, ws, secret, previous = row[:9]
        job = by_id[job_id]
        live = tuple(s for s in (secret, previous) if s)
        wt = _watch_table(tuple(row[9:]))
        found[job_id] = Target(job, holder, start, cursor, seq, url, ck, ws, live, wt, leased_at)
    return found


@lru_cache(maxsize=1024)
def _watch_table(row: tuple[Any, ...]) -> WatchTable:
    """A registry row whose JSON columns came as text (queries.TAKE_OVER): parsed once per
    distinct row, so a changed registration is a new key, never a stale cached one."""
    return WatchTable.from_row(
        tuple(orjson.loads(v) if i in queries.REGISTRY_JSON_AT else v for i, v in enumerate(row))
    )


async def report_not_taken(conn: psycopg.AsyncConnection[Any], jobs: Sequence[Job]) -> None:
    """Say why jobs were dropped: another worker still holds the claim, or it moved on."""
    if not jobs:
        return
    params = {"nums": [j.subscription for j in jobs], "jobs": [j.job_id for j in jobs]}
    busy = {row[0] for row in await (await conn.execute(queries.CLAIM_BUSY, params)).fetchall()}
    for job in jobs:
        log.info("claim_busy" if job.job_id in busy else "job_stale", extra=_fields(job))


async def hand_back(conn: psycopg.AsyncConnection[Any], windows: Sequence[Target]) -> None:
    """Step down as holder of windows that have no POST in flight and are being requeued."""
    if windows:
        await conn.execute(
            queries.HAND_BACK,
            {
                "nums": [w.job.subscription for w in windows],
                "jobs": [w.job.job_id for w in windows],
                "holders": [w.holder for w in windows],
            },
        )


def _fields(job: Job) -> dict[str, Any]:
    return {
        "subscription": job.subscription,
        "job": job.job_id,
        "window_start": job.window_start.isoformat(),
        "window_end": job.window_end.isoformat(),
    }
