"""Starting a batch of windows: one take-over, shared first reads, a task per window.

This is the database and HTTP side of the worker; worker/service.py is the broker side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import psycopg
from psycopg_pool import AsyncConnectionPool

from apievents.common import queries
from apievents.common.db import connection_lost as lost
from apievents.common.messages import Checkpoint, Job, Outcome
from apievents.common.registry import WatchTable
from apievents.common.settings import Settings
from apievents.common.ssrf import EndpointPolicy
from apievents.worker import reads, takeover
from apievents.worker.delivery import Context, Disposition, deliver
from apievents.worker.reads import FirstPage
from apievents.worker.sender import Sender
from apievents.worker.source_reads import SourceReads
from apievents.worker.takeover import Target

log = logging.getLogger(__name__)
REGISTRY_TTL = 60.0  # a WatchTable is never changed while subscriptions use it

Result = Outcome | Disposition
OnCheckpoint = Callable[[Checkpoint], None]


class Windows(Protocol):
    """What the broker side of the worker needs from the windows."""

    async def start(self, jobs: Sequence[Job]) -> dict[str, asyncio.Future[Result]]:
        """A result per job id: a running window, or STALE for a job whose claim moved on.
        Raises if the database cannot be reached (the caller requeues the batch)."""

    async def hand_back(self, jobs: Sequence[Job]) -> None:
        """Step down as holder of cancelled windows, so their requeued jobs go on at once."""

    async def close(self) -> None:
        """Close connections."""


class DatabaseWindows:
    """Windows of real claims, rows and endpoints."""

    def __init__(self, settings: Settings, report: OnCheckpoint) -> None:
        self.s = settings
        self.pool = AsyncConnectionPool(
            settings.database_url,
            min_size=1,
            max_size=settings.worker_db_connections,
            kwargs={"autocommit": True, "connect_timeout": 10},
            timeout=10,
            name="worker",
            open=False,
        )
        self.ctx = Context(
            self.pool,
            Sender(
                settings.http_timeout,
                settings.http_connect_timeout,
                settings.worker_concurrency,
                EndpointPolicy.from_settings(settings),
                settings.ca_bundle,
                settings.dns_timeout_seconds,
            ),
            settings.batch_size,
            settings.lease_seconds,
            settings.sender_name,
            settings.checkpoint_batches,
            report,
            asyncio.Semaphore(settings.worker_concurrency),
            settings.http_timeout + settings.http_connect_timeout,
            sources=SourceReads(
                self.pool, settings.source_connections, settings.source_timeout_seconds
            ),
        )
        self._targets: dict[str, Target] = {}
        self._tables: tuple[float, dict[str, WatchTable]] = (0.0, {})

    @classmethod
    async def open(cls, settings: Settings, report: OnCheckpoint) -> DatabaseWindows:
        """Made on the worker's loop, where its pool and HTTP client live."""
        windows = cls(settings, report)
        await windows.pool.open(wait=False)
        return windows

    async def start(self, jobs: Sequence[Job]) -> dict[str, asyncio.Future[Result]]:
        """Take over every claim in one statement, read shared first pages alongside, and
        start a task per window."""
        found, firsts = await self._take_over(jobs, await self._watch_tables())
        results: dict[str, asyncio.Future[Result]] = {}
        dropped = []
        for job in jobs:
            target = found.get(job.job_id)
            if target is None:
                dropped.append(job)
                done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
                done.set_result(Disposition.STALE)
                results[job.job_id] = done
                continue
            first = firsts.get(job.job_id) if target.resumes_where_issued else None
            self._targets[job.job_id] = target
            task = asyncio.create_task(deliver(self.ctx, target, first))
            task.add_done_callback(self._forget(job.job_id))
            results[job.job_id] = task
        if dropped:
            with contextlib.suppress(Exception):  # only a log line depends on it
                async with self.pool.connection() as conn:
                    await takeover.report_not_taken(conn, dropped)
        return results

    def _forget(self, job_id: str) -> Callable[[asyncio.Future[Result]], None]:
        """Drop a finished window's target; a cancelled one stays for hand_back."""

        def forget(task: asyncio.Future[Result]) -> None:
            if not task.cancelled():
                self._targets.pop(job_id, None)

        return forget

    async def _take_over(
        self, jobs: Sequence[Job], tables: dict[str, WatchTable]
    ) -> tuple[dict[str, Target], dict[str, FirstPage]]:
        sql, params, holder = takeover.statement(jobs, self.s.lease_seconds)
        shared = reads.shared_reads(jobs, tables)
        limit = self.s.batch_size
        async with self.pool.connection() as conn:
            sent = asyncio.get_running_loop().time()  # the claims' leases start after this
            try:
                async with conn.pipeline():
                    taken = await conn.execute(sql, params)
                    cursors = await reads.run_shared(conn, shared, limit)
            except psycopg.Error as e:
                if lost(e, conn):
                    raise
                # A shared read failed (a dropped table, a statement timeout on one slow
                # table) and took the take-over down with it in the pipeline's transaction:
                # take over alone; each window's own read then reports the error on its own
                # subscription, and no other window waits for it.
                sent = asyncio.get_running_loop().time()
                taken, cursors, shared = await conn.execute(sql, params), [], []
            rows = await taken.fetchall()
            firsts: dict[str, FirstPage] = {}
            for read, cur in zip(shared, cursors, strict=True):
                found = await cur.fetchall()
                try:
                    firsts |= reads.split(read, found, limit)
                except Exception:  # one table's oddity (say, a naive timestamp column) costs
                    log.exception(  # only the shared read: its windows read their own pages
                        "shared_read_unusable", extra={"watch_table": read.watch_table.name}
                    )
        found_targets = takeover.targets(rows, jobs, holder, sent)
        for job_id, target in found_targets.items():
            if tables.get(target.watch_table.name) != target.watch_table:
                firsts.pop(job_id, None)  # read from a stale definition: the window reads anew
                self._tables = (0.0, {})  # and the next batch reads the registry again
        return found_targets, firsts

    async def _watch_tables(self) -> dict[str, WatchTable]:
        """The registry, cached for the shared reads; the take-over's own registry rows are
        what windows read, and a mismatch drops the cache (see _take_over)."""
        expires, tables = self._tables
        now = asyncio.get_running_loop().time()
        if now >= expires:
            async with self.pool.connection() as conn:
                cur = await conn.execute(queries.REGISTRY_LIST)
                tables = {wt.name: wt for wt in map(WatchTable.from_row, await cur.fetchall())}
            self._tables = (now + REGISTRY_TTL, tables)
        return tables

    async def hand_back(self, jobs: Sequence[Job]) -> None:
        """Step down as holder of cancelled windows, so their requeued jobs go on at once; but
        not of one cancelled mid-POST, which its receiver may still be reading: its claim's
        lease decides when it goes on, as if this worker had died."""
        windows = [
            self._targets.pop(j.job_id)
            for j in jobs
            if j.job_id in self._targets and j.job_id not in self.ctx.interrupted
        ]
        async with self.pool.connection() as conn:
            await takeover.hand_back(conn, windows)

    async def close(self) -> None:
        """Close the HTTP client and the pool."""
        await self.ctx.sender.close()
        if self.ctx.sources is not None:
            self.ctx.sources.close()
        await self.pool.close()
