"""Deciding what is due: lock due subscriptions, skip idle ones, claim the rest as jobs."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from apievents.common import queries, queries_pg, registry, watermark
from apievents.common.db import connection_lost
from apievents.common.logs import error_text
from apievents.common.messages import Job, new_id
from apievents.common.watermark import Horizon
from apievents.producer import window
from apievents.producer.sources import Reading

log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # WatchTables already reported as unusable, once per process


@dataclass(frozen=True)
class Claimed:
    """What one claim transaction found."""

    due: int
    jobs: list[Job]
    horizon: Horizon  # the server clock and the safe window end read with it


def claim_due(
    conn: psycopg.Connection[Any],
    limit: int,
    lease_seconds: float,
    margin: timedelta,
    per_customer: int = 0,
    reading: Reading | None = None,
) -> Claimed:
    """Claim up to ``limit`` due subscriptions in one transaction.

    The window end is read from the database server's clock and bounded by every write that
    can still commit (common/watermark.py). A subscription whose table has nothing newer than
    its position gets no job: its DateTimeStart moves to the window end, and it is looked at
    again at its next poll (within PollingSeconds). No customer gets more than
    ``per_customer`` windows in flight (0: no cap).

    Without a ``reading`` this claims the subscriptions on apievents' own PostgreSQL; with
    one, those on that MariaDB/MySQL source, whose clock, writes in flight and newest changes
    the reading holds (a table it did not read is issued, never skipped).
    """
    source = reading.source if reading else ""
    with conn.transaction():
        if reading is None:
            horizon = watermark.read(conn, margin)
        else:
            horizon = reading.horizon(margin, watermark.frontier(conn, source))
        end = horizon.end
        params = {"limit": limit, "cap": per_customer, "source": source}
        due = conn.execute(queries.DUE_FOR_UPDATE, params).fetchall()
        if due or reading is not None:  # a source's frontier moves while nothing is due too:
            watermark.advance(conn, end, source)  # a new subscription's safe start needs it
        if not due:
            return Claimed(0, [], horizon)
        names = {row[1] for row in due}
        if reading is None:
            newest = _newest_changes(conn, names)
        else:
            newest = {name: reading.newest.get(name, window.UNKNOWN) for name in names}
        idle: list[int] = []
        jobs: list[Job] = []
        for num, watch_table, start, cursor_key, stop, failures in due:
            job_end = window.plan(end, start, cursor_key, stop, newest.get(watch_table))
            if job_end is None:
                idle.append(num)
            else:
                jobs.append(Job(new_id(), num, start, job_end, failures, cursor_key, watch_table))
        if idle:
            conn.execute(queries.RESCHEDULE_IDLE, {"nums": idle, "end": end})
        if jobs:
            conn.execute(
                queries.CLAIM,
                {
                    "lease": lease_seconds,
                    "claims": queries.rows(
                        [
                            {"num": j.subscription, "job": j.job_id, "window_end": j.window_end}
                            for j in jobs
                        ]
                    ),
                },
            )
    return Claimed(len(due), jobs, horizon)


def release(conn: psycopg.Connection[Any], jobs: Iterable[Job]) -> None:
    """Give back claims whose jobs the broker refused (they were never routed)."""
    conn.execute(queries.RELEASE_CLAIMS, ([j.job_id for j in jobs],))


def _newest_changes(conn: psycopg.Connection[Any], names: set[str]) -> dict[str, Any]:
    """Newest change timestamp per WatchTable: one index lookup per table, not per subscription."""
    newest: dict[str, datetime | object | None] = {}
    for wt in registry.all_tables(conn):
        if wt.name not in names:
            continue
        try:
            with conn.transaction():  # a savepoint: a dropped table must not abort the claim
                row = conn.execute(queries_pg.newest_change(wt)).fetchone()
            newest[wt.name] = _aware(wt.name, row[0] if row else None)
        except psycopg.errors.Error as e:
            if connection_lost(e, conn):
                raise  # a slow table's cancelled query is reported below; it stops nothing
            log.warning(
                "watch_table_unreadable", extra={"watch_table": wt.name, "error": error_text(e)}
            )
            newest[wt.name] = window.UNKNOWN
    return newest


def _aware(name: str, newest: datetime | None) -> datetime | object | None:
    """A time that compares with window ends. A column without a time zone (registered before
    the registry refused them) cannot: its window is issued and the reading reports."""
    if newest is not None and newest.tzinfo is None:
        if name not in _WARNED:
            _WARNED.add(name)
            log.warning("watch_table_not_timestamptz", extra={"watch_table": name})
        return window.UNKNOWN
    return newest
