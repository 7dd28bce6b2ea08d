"""Deciding what is due: lock due subscriptions, skip idle ones, claim the rest as jobs."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from apievents.common import queries, registry
from apievents.common.logs import error_text
from apievents.common.messages import Job, new_id
from apievents.producer import window

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claimed:
    """What one claim transaction found."""

    due: int
    jobs: list[Job]
    clock: datetime  # the database server's clock
    end: datetime  # the safe window end: clock minus what open transactions hold back

    @property
    def hold_seconds(self) -> float:
        """How far open transactions hold deliveries behind the server clock."""
        return (self.clock - self.end).total_seconds()


def claim_due(
    conn: psycopg.Connection[Any], limit: int, lease_seconds: float, margin: timedelta
) -> Claimed:
    """Claim up to ``limit`` due subscriptions in one transaction.

    The window end is read from the database server's clock and bounded by open transactions
    (window.safe_end). A subscription whose table has nothing newer than its position gets no
    job and is simply looked at again after PollingSeconds.
    """
    with conn.transaction():
        clock = _scalar(conn, queries.SERVER_CLOCK)
        end = window.safe_end(clock, _scalar(conn, queries.OLDEST_OPEN_TRANSACTION), margin)
        due = conn.execute(queries.DUE_FOR_UPDATE, (limit,)).fetchall()
        if not due:
            return Claimed(0, [], clock, end)
        newest = _newest_changes(conn, {row[1] for row in due})
        idle: list[int] = []
        jobs: list[Job] = []
        for num, watch_table, start, cursor_key, stop, failures in due:
            job_end = window.plan(end, start, cursor_key, stop, newest.get(watch_table))
            if job_end is None:
                idle.append(num)
            else:
                jobs.append(Job(new_id(), num, start, job_end, failures, cursor_key, watch_table))
        if idle:
            conn.execute(queries.RESCHEDULE_IDLE, (idle,))
        if jobs:
            conn.execute(
                queries.CLAIM,
                {
                    "lease": lease_seconds,
                    "nums": [j.subscription for j in jobs],
                    "jobs": [j.job_id for j in jobs],
                    "ends": [j.window_end for j in jobs],
                },
            )
    return Claimed(len(due), jobs, clock, end)


def can_see_all_transactions(conn: psycopg.Connection[Any]) -> bool:
    """Whether this role sees every session's xact_start (superuser or pg_read_all_stats)."""
    return bool(_scalar(conn, queries.CAN_SEE_ALL_TRANSACTIONS))


def _scalar(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query.encode()).fetchone()
    return None if row is None else row[0]


def release(conn: psycopg.Connection[Any], jobs: Iterable[Job]) -> None:
    """Give back claims whose jobs never reached the broker."""
    conn.execute(queries.RELEASE_CLAIMS, ([j.job_id for j in jobs],))


def _newest_changes(conn: psycopg.Connection[Any], names: set[str]) -> dict[str, Any]:
    """Newest change timestamp per WatchTable: one index lookup per table, not per subscription."""
    newest: dict[str, datetime | object | None] = {}
    for wt in registry.all_tables(conn):
        if wt.name not in names:
            continue
        try:
            with conn.transaction():  # a savepoint: a dropped table must not abort the claim
                row = conn.execute(queries.newest_change(wt)).fetchone()
            newest[wt.name] = row[0] if row else None
        except psycopg.errors.Error as e:
            if isinstance(e, psycopg.OperationalError):
                raise
            log.warning(
                "watch_table_unreadable", extra={"watch_table": wt.name, "error": error_text(e)}
            )
            newest[wt.name] = window.UNKNOWN
    return newest
