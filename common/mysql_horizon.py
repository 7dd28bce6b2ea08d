"""The safe window end of a MariaDB/MySQL source, read from that server only.

A reading holds the server's clock, the oldest statement still running, the earliest stamp an
open InnoDB transaction may write (common/trx_origins.py) and the prepared XA transactions
(read in that order), then the newest change of each of the source's WatchTables.
common/watermark.mysql_safe_end turns it into the window end. The producer reads every source
this way (producer/sources.py); so does a new subscription's default DateTimeStart.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from apievents.common import mysql, queries_mysql, sources, watermark
from apievents.common.logs import error_text
from apievents.common.trx_origins import Origins, Transaction
from apievents.common.watchtable import WatchTable
from apievents.common.watermark import Horizon

log = logging.getLogger(__name__)


class BlindSource(Exception):
    """The source's user lacks PROCESS: other sessions' writes are invisible to it."""


@dataclass(frozen=True)
class Reading:
    """One source's clock and writes in flight, then its tables' newest changes."""

    source: str
    clock: datetime
    oldest_statement: datetime | None
    oldest_transaction: datetime | None  # the earliest stamp an open transaction may write
    hidden: int  # prepared XA transactions and delayed-insert threads: stamps unknown
    unproven: int  # transactions open before the first reading: their stamps are unknown
    newest: dict[str, Any] = field(default_factory=dict)  # WatchTable name -> stamp

    def horizon(self, margin: timedelta, frontier: datetime | None) -> Horizon:
        """The clock and the safe window end (common/watermark.mysql_safe_end)."""
        end = watermark.mysql_safe_end(
            self.clock,
            self.oldest_statement,
            self.oldest_transaction,
            margin,
            frontier,
            self.hidden,
            self.unproven,
        )
        return Horizon(self.clock, end, self.hidden)


def utc(t: datetime | None) -> datetime | None:
    """A time read in the session's UTC zone, made aware."""
    return None if t is None else t.replace(tzinfo=UTC)


async def check_privileges(pool: mysql.Pool) -> None:
    """BlindSource unless the source's user may see every session's transactions."""
    rows = await pool.fetch(queries_mysql.HAS_PROCESS)
    if not rows or not rows[0][0]:
        raise BlindSource(
            f"source {pool.name!r}: its user needs the PROCESS privilege, or other sessions' "
            "open transactions are invisible and changes could be skipped; "
            "GRANT PROCESS ON *.* TO the user"
        )


STALE_RETRIES = 8
CACHE_IDLE = 0.11  # seconds without readers after which InnoDB refreshes INNODB_TRX


class Unsettled(mysql.SourceUnavailable):
    """No safe end yet: transactions open before the first reading, and no frontier."""


class StaleTransactions(mysql.SourceUnavailable):
    """INNODB_TRX kept showing an old copy: other readers query it more than every 0.1 s."""


@dataclass(frozen=True)
class _Server:
    """What a reading takes from the server as a whole (the bound is server-wide)."""

    clock: datetime
    oldest_statement: datetime | None
    oldest_transaction: datetime | None
    hidden: int
    unproven: int


# Sources on one server share its server-wide part: INNODB_TRX refreshes only after 0.1 s
# without readers, so one reader per source would keep every source's copy stale. A shared
# part stays safe for each source: its tables' newest changes are read after it was taken.
SHARE_FOR = 0.2  # seconds
_SHARED: dict[tuple[int, str, int], tuple[float, _Server]] = {}
_LOCKS: dict[tuple[int, str, int], asyncio.Lock] = {}
# What the previous reading of each server saw (common/trx_origins.py). Sessions that do not
# share start without it, so every transaction open then is unproven.
_ORIGINS: dict[tuple[int, str, int], Origins] = {}


async def _server(pool: mysql.Pool, share: bool) -> _Server:
    if not share:
        return await _read_server(pool, Origins())
    loop = asyncio.get_running_loop()
    key = (id(loop), pool.address.host, pool.address.port)
    async with _LOCKS.setdefault(key, asyncio.Lock()):
        taken, part = _SHARED.get(key, (float("-inf"), None))
        if part is None or loop.time() - taken >= SHARE_FOR:
            taken = loop.time()
            part = await _read_server(pool, _ORIGINS.setdefault(key, Origins()))
            _SHARED[key] = (taken, part)
        return part


# Whether each server's PROCESSLIST has TIME_MS (MariaDB, Percona), by address.
_TIME_MS: dict[tuple[str, int], bool] = {}


async def _statements_query(pool: mysql.Pool, run: Any) -> str:
    address = (pool.address.host, pool.address.port)
    if address not in _TIME_MS:
        ((has,),) = await run(queries_mysql.HAS_TIME_MS)
        _TIME_MS[address] = bool(has)
    if _TIME_MS[address]:
        return queries_mysql.STATEMENTS_IN_FLIGHT
    return queries_mysql.STATEMENTS_IN_FLIGHT_SECONDS


async def _read_server(pool: mysql.Pool, origins: Origins) -> _Server:
    async with pool.session() as run:
        query = await _statements_query(pool, run)
        try:
            statements = await run(query)
        except mysql.Error:
            _TIME_MS.pop((pool.address.host, pool.address.port), None)  # another server now?
            raise
        transactions = await _transactions(run)
        xa = await run(queries_mysql.XA_PREPARED)
    clock = statements[0][0].replace(tzinfo=UTC)
    running = {thread: start.replace(tzinfo=UTC) for _, thread, start, _ in statements if thread}
    delayed = sum(1 for *_, handler in statements if handler)
    oldest_transaction, unproven = origins.observe(clock, running, transactions)
    oldest_statement = min(running.values(), default=None)
    return _Server(clock, oldest_statement, oldest_transaction, len(xa) + delayed, unproven)


async def read(pool: mysql.Pool, tables: list[WatchTable], *, share: bool = False) -> Reading:
    """The writes in flight first, then each table's newest change: every row at or below the
    reading's end was committed before the newest changes were read. With ``share``, sources on
    the same server take one server-wide part between them (the producer's watchers)."""
    server = await _server(pool, share)
    newest: dict[str, Any] = {}
    for wt in tables:
        query, args = queries_mysql.newest_change(wt)
        try:
            rows = await pool.fetch(query, args)
            newest[wt.name] = utc(rows[0][0]) if rows else None
        except mysql.Error as e:  # a dropped table: its windows are issued and report it
            log.warning(
                "watch_table_unreadable", extra={"watch_table": wt.name, "error": error_text(e)}
            )
            newest[wt.name] = watermark.UNKNOWN
    return Reading(
        pool.name,
        server.clock,
        server.oldest_statement,
        server.oldest_transaction,
        server.hidden,
        server.unproven,
        newest,
    )


async def _transactions(run: Any) -> list[Transaction]:
    """Every other session's open transaction, from a copy of INNODB_TRX taken after this
    call began (see queries_mysql.TRANSACTIONS_IN_FLIGHT); StaleTransactions if none came."""
    for attempt in range(STALE_RETRIES):
        if attempt:  # jittered, so two readers that collided do not collide again
            await asyncio.sleep(CACHE_IDLE + random.uniform(0, CACHE_IDLE))  # noqa: S311
        await run(queries_mysql.OPEN_CANARY)
        # No clean-up on failure: the pool closes a connection whose statement failed or was
        # cancelled, which ends the canary. A statement sent on it then could fail in turn and
        # replace a cancellation with its own error (a stopped watcher would read on).
        rows = await run(queries_mysql.TRANSACTIONS_IN_FLIGHT, (f"%{uuid.uuid4().hex}%",))
        await run(queries_mysql.CLOSE_CANARY)
        if any(fresh for *_, fresh in rows):
            return [(thread, t.replace(tzinfo=UTC)) for thread, t, own, _ in rows if not own]
    raise StaleTransactions("INNODB_TRX showed no fresh copy; something reads it constantly")


def safe_start(
    conn: psycopg.Connection[Any], source_name: str, margin: timedelta, timeout: float
) -> datetime:
    """A new subscription's default DateTimeStart on a source: its safe window end now (a
    transaction open at creation may still commit rows stamped before now)."""
    source = sources.get(conn, source_name)

    async def horizon() -> Reading:
        pool = mysql.Pool(source.name, source.address, 1, timeout)
        try:
            return await read(pool, [])
        finally:
            pool.close()

    frontier = watermark.frontier(conn, source_name)
    try:
        reading = asyncio.run(horizon())
    except StaleTransactions:
        if frontier is None:
            raise
        return frontier  # the producer's last safe end: every later change is still owed
    end = reading.horizon(margin, frontier).end
    if end == watermark.NEVER:
        raise Unsettled("transactions opened before apievents first read the source")
    watermark.advance(conn, end, source_name)
    return end
