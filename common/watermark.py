"""The safe window end of a watched PostgreSQL database, read from the database server only.

PostgreSQL stamps a row with now(), the start of its transaction, but the row becomes visible
only at commit. A window may therefore end only below every write that can still commit: below
the start of every open transaction, and below the clock by a margin that covers a transaction
that has taken its timestamp but does not show in pg_stat_activity yet. A transaction that
hides from pg_stat_activity altogether (prepared, or in a session with track_activities off)
freezes the end at the frontier: the highest end issued while everything was visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from apievents.common import queries

TICK = timedelta(microseconds=1)  # timestamptz resolution
NEVER = datetime.min.replace(tzinfo=UTC)  # no safe end at all: nothing may be issued
UNKNOWN = object()  # a table's newest change could not be read: its windows are issued


@dataclass(frozen=True)
class Horizon:
    """The database clock and the safe window end read with it."""

    clock: datetime
    end: datetime
    hidden: int = 0  # transactions or sessions that pg_stat_activity cannot show

    @property
    def hold_seconds(self) -> float:
        """How far writes that can still commit hold window ends behind the clock."""
        return (self.clock - self.end).total_seconds()


def safe_end(
    clock: datetime,
    oldest_write: datetime | None,
    margin: timedelta,
    frontier: datetime | None = None,
    hidden: int = 0,
) -> datetime:
    """The latest window end that no open or future transaction can still write at or below.

    ``oldest_write`` is the earliest timestamp an open transaction may still commit rows with:
    its xact_start, or the query_start of an active statement whose xact_start has not shown
    yet. With ``hidden`` transactions the end also stays at or below ``frontier``.
    """
    end = clock - margin
    if oldest_write is not None:
        end = min(end, oldest_write - TICK)
    if hidden:
        end = min(end, frontier or NEVER)
    return end


SECOND = timedelta(seconds=1)


def whole_second(t: datetime) -> datetime:
    """``t`` truncated to its second, as MySQL truncates a statement's start into DateTStamp."""
    return t.replace(microsecond=0)


def mysql_safe_end(
    clock: datetime,
    oldest_statement: datetime | None,
    oldest_transaction: datetime | None,
    margin: timedelta,
    frontier: datetime | None = None,
    hidden: int = 0,
    unproven: int = 0,
) -> datetime:
    """The latest window end of a MariaDB/MySQL source that no write can still reach.

    DateTStamp is the start of the statement that wrote the row, truncated to the second, so a
    second stays writable while it is the current second, while a statement that started in
    it runs, and while a transaction that started in it is open (its later statements stamp
    later seconds, but its rows are invisible until it commits). The end is the second before
    the oldest of those, and at most ``clock - margin``; it is always a whole second.

    ``oldest_transaction`` is the earliest stamp an open transaction may write: the start of
    the statement that opened it, which InnoDB's trx_started can follow by any delay
    (common/trx_origins.py). The margin covers the moments between the server's reads. While
    there are ``hidden`` writes (prepared XA transactions, delayed-insert threads) or
    ``unproven`` transactions (open before the first reading), the end stays at or below
    ``frontier``, and without a frontier nothing may be issued.
    """
    writable = whole_second(clock)
    if oldest_statement is not None:  # its start is computed from TIME_MS: keep the margin
        writable = min(writable, whole_second(oldest_statement - margin))
    if oldest_transaction is not None:
        writable = min(writable, whole_second(oldest_transaction - margin))
    end = min(writable - SECOND, whole_second(clock - margin))
    if hidden or unproven:
        end = min(end, frontier or NEVER)
    return end


def read(conn: psycopg.Connection[Any], margin: timedelta) -> Horizon:
    """The horizon now. Call inside a transaction: the clock is read before the activity
    snapshot, which PostgreSQL then keeps for the rest of the transaction."""
    (clock,) = _one(conn, queries.SERVER_CLOCK)
    oldest, hidden, frontier = _one(conn, queries.WRITES_IN_FLIGHT)
    return Horizon(clock, safe_end(clock, oldest, margin, frontier, hidden), hidden)


def advance(conn: psycopg.Connection[Any], end: datetime, source: str = "") -> None:
    """Record that window ends up to ``end`` were issued (the frontier only moves forward)."""
    if end == NEVER:
        return
    if source:
        conn.execute(queries.ADVANCE_FRONTIER_OF, (source, end))
    else:
        conn.execute(queries.ADVANCE_FRONTIER, (end,))


def frontier(conn: psycopg.Connection[Any], source: str) -> datetime | None:
    """The highest window end issued so far for a source (None before the first)."""
    row = conn.execute(queries.FRONTIER_OF, (source,)).fetchone()
    return row[0] if row else None


def can_see_every_transaction(conn: psycopg.Connection[Any]) -> str | None:
    """Why this role cannot bound window ends safely, or None if it can."""
    sees_all, tracked = _one(conn, queries.CAN_SEE_ALL_TRANSACTIONS)
    if not sees_all:
        return (
            "the database role must be superuser or have pg_read_all_stats, or open "
            "transactions of other roles are invisible and changes could be skipped"
        )
    if not tracked:
        return (
            "track_activities is off for this database, so open transactions are invisible "
            "and changes could be skipped; turn it on"
        )
    return None


def _one(conn: psycopg.Connection[Any], query: str) -> tuple[Any, ...]:
    row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return tuple(row)
