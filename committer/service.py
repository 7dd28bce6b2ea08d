"""The committer service: consume outcomes, apply them in batches, then ack them.

An outcome is acked only after the transaction that applied it committed, so a crash at any
point redelivers it; applying it twice is harmless because the update is a compare-and-set.
The SQL is plain psycopg on a worker thread; the event loop keeps the broker session alive.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from apievents.committer.apply import apply_batch
from apievents.common import broker, db, metrics
from apievents.common.broker import Message, Session
from apievents.common.db import connection_lost
from apievents.common.lifecycle import Blocking, Lifecycle, Wired, readiness
from apievents.common.logs import error_text
from apievents.common.messages import Checkpoint, MessageError, Report, parse_reports
from apievents.common.retry import RetryPolicy
from apievents.common.settings import Settings
from apievents.common.topology import OUTCOMES

log = logging.getLogger(__name__)

Pending = tuple[Message, list[Report]]


class Committer:
    """Applies up to ``batch`` reports per transaction."""

    def __init__(
        self,
        settings: Settings,
        pool: ConnectionPool,
        policy: RetryPolicy,
        lifecycle: Lifecycle,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.policy = policy
        self.lifecycle = lifecycle
        self.blocking = Blocking(lifecycle)  # its database calls, off the loop
        self.batch = settings.commit_batch
        self.linger = settings.commit_linger_seconds
        self._pending: list[Pending] = []
        self._arrived = asyncio.Event()

    def run(self) -> None:
        """Serve until stopped, reconnecting after broker or database trouble."""
        self.lifecycle.serve("committer", self._session)

    async def _session(self) -> None:
        s = self.settings
        self._pending = []  # unacked messages of a dead connection are redelivered
        self._arrived = asyncio.Event()
        session = await broker.connect(s.broker_url, s.queue_prefix, s.broker_heartbeat)
        try:
            await session.consume(OUTCOMES, self.batch, self._on_message)
            self.lifecycle.connected.set()
            while not self.lifecycle.stop.is_set():
                await self._collect(session)
                await self._apply()
            await session.cancel()
            await self._apply()
        finally:
            await session.close()

    def _on_message(self, message: Message) -> None:
        try:
            self._pending.append((message, parse_reports(message.body)))
        except MessageError as e:
            log.error("outcome_unparseable", extra={"error": str(e)})
            message.session.reject(message)
            return
        self._arrived.set()

    def _count(self) -> int:
        return sum(len(reports) for _, reports in self._pending)

    async def _collect(self, session: Session) -> None:
        """Wait for a first report, then linger briefly so a batch can fill."""
        waiter = asyncio.ensure_future(self._arrived.wait())
        others: list[asyncio.Future[Any]] = [waiter, session.closed]
        await asyncio.wait(others, timeout=0.5, return_when="FIRST_COMPLETED")
        waiter.cancel()
        if session.closed.done():
            session.closed.result()  # raises BrokerLost
        deadline = asyncio.get_running_loop().time() + self.linger
        while self._pending and self._count() < self.batch:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            await asyncio.sleep(min(left, 0.01))
        self._arrived.clear()

    async def _apply(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        reports = [r for _, items in pending for r in items]
        try:
            results = await self.blocking(self._apply_all, reports)
        except psycopg.Error as e:
            if connection_lost(e):
                raise  # transient: the session reconnects and the batch is redelivered
            log.error("commit_batch_failed", extra={"error": error_text(e)})
            results = await self.blocking(self._apply_one_by_one, reports)
        self._done(pending, reports, results)

    def _apply_all(self, reports: list[Report]) -> list[str]:
        with self.pool.connection() as conn:
            return apply_batch(conn, reports, self.policy, self.settings.disable_after_seconds)

    def _apply_one_by_one(self, reports: list[Report]) -> list[str]:
        """Isolate a report the database refuses, so it cannot block the others. A refused
        report loses nothing: its claim's lease runs out and the window is issued again."""
        results = []
        for report in reports:
            try:
                results += self._apply_all([report])
            except psycopg.Error as e:
                if connection_lost(e):
                    raise
                log.error("outcome_refused", extra=_fields(report) | {"error": error_text(e)})
                results.append("refused")
        return results

    @staticmethod
    def _done(pending: list[Pending], reports: list[Report], results: list[str]) -> None:
        metrics.COMMIT_BATCH_SIZE.observe(len(results))
        for result, count in Counter(results).items():
            metrics.WINDOWS_COMMITTED.labels(result).inc(count)
        for report, result in zip(reports, results, strict=True):
            level = logging.DEBUG if result in ("advanced", "checkpoint") else logging.INFO
            if log.isEnabledFor(level):  # one a report: its fields only when it is written
                log.log(level, "outcome_applied", extra=_fields(report) | {"result": result})
        for message, _ in pending:
            message.session.ack(message)


def build(settings: Settings, lifecycle: Lifecycle) -> Wired:
    """Wire a Committer from settings; returns it and a closer for its resources."""
    pool = db.pool(settings.database_url, 2, "committer")
    committer = Committer(
        settings,
        pool,
        RetryPolicy(settings.retry_base_seconds, settings.retry_cap_seconds),
        lifecycle,
    )
    return Wired(committer, pool.close, readiness(pool, lifecycle))


def _fields(report: Report) -> dict[str, str | int]:
    fields: dict[str, str | int] = {"subscription": report.subscription, "job": report.job_id}
    if isinstance(report, Checkpoint):
        return fields | {"window_start": report.position_ts.isoformat()}
    return fields | {
        "window_start": report.window_start.isoformat(),
        "window_end": report.window_end.isoformat(),
    }
