"""Deciding what is due: lock due subscriptions, skip idle ones, claim the rest as jobs."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import psycopg

from common import queries, registry
from common.logs import error_text
from common.messages import Job, new_id

log = logging.getLogger(__name__)

_UNKNOWN = object()  # the table could not be read: issue a job, the worker reports the error


def claim_due(
    conn: psycopg.Connection[Any], limit: int, lease_seconds: float
) -> tuple[int, list[Job]]:
    """Claim up to ``limit`` due subscriptions in one transaction; returns (due, jobs).

    The window end is read from the database server's clock. A subscription whose table has
    nothing newer than its DateTimeStart gets no job and is simply looked at again later.
    """
    with conn.transaction():
        row = conn.execute(queries.DATABASE_NOW).fetchone()
        assert row is not None
        now: datetime = row[0]
        due = conn.execute(queries.DUE_FOR_UPDATE, (limit,)).fetchall()
        if not due:
            return 0, []
        newest = _newest_changes(conn, {row[1] for row in due})
        idle: list[int] = []
        jobs: list[Job] = []
        for num, watch_table, start, stop, failures in due:
            end = min(now, stop) if stop is not None else now
            latest = newest.get(watch_table)
            if end <= start or (latest is not _UNKNOWN and (latest is None or latest <= start)):
                idle.append(num)
            else:
                jobs.append(Job(new_id(), num, start, end, failures))
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
    return len(due), jobs


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
            newest[wt.name] = _UNKNOWN
    return newest
