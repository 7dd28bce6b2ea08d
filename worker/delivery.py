"""Delivering one taken-over window: page, keep the claim, POST, checkpoint, report.

A window stops at the first answer that is not 200. Its outcome carries the position of its
last row answered 200, so a failure after progress keeps that progress. Every
``checkpoint_batches`` batches a Checkpoint is handed on, so a worker that dies resends at
most that many. Right before every POST but the first (the take-over set the lease), the
claim is checked, and its lease extended once what is left of it might not cover the POST,
so a window whose claim moved on (an edit revoked it, another worker took it over after the
lease ran out) never sends another batch.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from apievents.common import metrics, mysql, queries
from apievents.common.broker import TRANSIENT_ERRORS
from apievents.common.db import connection_lost
from apievents.common.logs import error_text
from apievents.common.messages import Checkpoint, Outcome
from apievents.worker import reads, rows
from apievents.worker.reads import FirstPage, Row
from apievents.worker.sender import Answer, Sender
from apievents.worker.source_reads import SourceReads
from apievents.worker.takeover import Target

log = logging.getLogger(__name__)
FRESH_LEASE = 0.5  # seconds a take-over's lease covers the first POST without an extension


@functools.cache
def _delivered(outcome: str) -> Any:
    """The DELIVERIES counter of one outcome (a handful of values), looked up once."""
    return metrics.DELIVERIES.labels(outcome)


class Disposition(enum.Enum):
    """What to do with a job message when there is no outcome to hand on."""

    STALE = "stale"  # the claim moved on (superseded, paused, removed): ack and drop
    REQUEUE = "requeue"  # database trouble or shutdown: hand the job back to the broker


@dataclass(frozen=True)
class Context:
    """What every window of a worker shares; ``posts`` are the POST slots (worker
    concurrency): a window waits for one, outside its POST's deadline."""

    pool: AsyncConnectionPool
    sender: Sender
    batch_size: int
    lease: float
    workstation: str
    checkpoint_batches: int
    report: Callable[[Checkpoint], None]
    posts: asyncio.Semaphore
    deadline: float  # of one POST, connect to last byte
    interrupted: set[str] = field(default_factory=set)  # jobs cancelled mid-POST
    sources: SourceReads | None = None  # pools of the MariaDB/MySQL sources


class _LostClaim(Exception):
    """The lease could not be extended: the claim was revoked, taken over, or is gone."""


class _SlowDatabase(TimeoutError):
    """Less than a POST's deadline of lease is left right before a POST (an extension came
    back late). The claim is still ours: the window is requeued like one whose database went
    away (and goes on from its last checkpoint once its lease runs out), no failure counted."""


async def deliver(ctx: Context, target: Target, first: FirstPage | None) -> Outcome | Disposition:
    """Run the window to an Outcome; a Disposition only when there is nothing to report."""
    window = _Window(ctx, target)
    try:
        return await window.run(first)
    except _LostClaim:
        # Report it: if an edit revoked the claim, the committer drops it now rather than
        # when the lease runs out. Any other loss makes this outcome stale.
        log.info("claim_lost", extra=_fields(target))
        return window.outcome(Answer(False, None, "stopped", "claim lost"))
    except psycopg.Error as e:
        if connection_lost(e):
            return await _requeue(target, e)
        # A dropped table, a permission, a statement timeout: the subscription backs off.
        return window.outcome(Answer(False, None, "database", error_text(e)))
    except (mysql.SourceUnavailable, mysql.Error) as e:
        # The source is down, slow or refuses the read: this subscription backs off alone.
        return window.outcome(Answer(False, None, "database", error_text(e)))
    except TRANSIENT_ERRORS as e:
        return await _requeue(target, e)
    except asyncio.CancelledError:
        raise
    except rows.RowEncodingError as e:
        return window.outcome(Answer(False, None, "serialization", error_text(e)))
    except Exception as e:  # contained: a failure on this subscription, never a requeue loop
        log.exception("window_failed", extra=_fields(target))
        return window.outcome(Answer(False, None, "internal", error_text(e)))
    finally:
        window._cancel_read()


class _Window:
    def __init__(self, ctx: Context, target: Target) -> None:
        self.ctx = ctx
        self.t = target
        self.wt = target.watch_table
        self.sent = self.batches = 0
        self.position: tuple[Any, Any] | None = None  # of the last row answered 200
        self.seq = target.seq
        self.leased = target.leased_at  # the take-over set the lease
        self.attempts: list[dict[str, Any]] = []
        self._next: asyncio.Task[list[Row]] | None = None

    async def run(self, first: FirstPage | None) -> Outcome:
        more = first is None or not first.complete
        if first is None or not (first.rows or first.complete):
            page, first = await self._read(self._resume_after()), None
        else:
            page = first.rows
        while page:
            full = len(page) == self.ctx.batch_size
            if more and (full or first is not None):  # read on while this page is sent
                self._next = asyncio.create_task(self._read(rows.position(page[-1])))
            async with self.ctx.posts:
                if self.batches or not self._lease_fresh():
                    await self._keep_claim()  # (its wait lets the read-ahead start first)
                body = rows.encode(self.wt, page)
                headers = self.t.headers(body, self.ctx.workstation)
                if not self._lease_covers_a_post():  # encoding took what an extension left
                    raise _SlowDatabase("the lease left does not cover a POST")
                answer = await self._post(len(page), body, headers)
            if not answer.ok:
                self._cancel_read()
                return self.outcome(answer)
            self._delivered(page)
            if self._next is None:
                break
            page, self._next, first = await self._next, None, None
            more = len(page) == self.ctx.batch_size
        return self.outcome(Answer(True, 200))

    def _resume_after(self) -> tuple[Any, Any] | None:
        """Where a window without a shared first page starts: its cursor, or its start."""
        return (self.t.start, self.t.cursor_key) if self.t.cursor_key is not None else None

    async def _read(self, after: tuple[Any, Any] | None) -> list[Row]:
        if self.wt.source:
            assert self.ctx.sources is not None
            return await self.ctx.sources.page(
                self.wt, self.t.start, self.t.job.window_end, after, self.ctx.batch_size
            )
        return await reads.page(
            self.ctx.pool, self.wt, self.t.start, self.t.job.window_end, after, self.ctx.batch_size
        )

    def _lease_fresh(self) -> bool:
        """Whether the take-over's lease is recent enough for the first POST without another
        round trip: under half a second old (an edit cannot have gone unseen for longer), and
        with a whole POST deadline of it left. Otherwise (a wait for a POST slot, say) the
        claim is checked first (_keep_claim), which finds a claim that an edit revoked."""
        return self._lease_age() < min(FRESH_LEASE, self.ctx.lease - self.ctx.deadline - 1.0)

    async def _keep_claim(self) -> None:
        """Make sure the claim is still ours and its lease outlasts the next POST with room to
        spare (a second and more, see _spare): a read while the last extension leaves that
        much by this worker's clock and by the database's, an extension otherwise. Either
        finds a claim that an edit revoked."""
        if self._spare_left():
            params = self.t.claim | {"margin": self.ctx.deadline + self._spare()}
            held = await self._claim_statement(queries.CLAIM_HELD, params)
            if held and self._spare_left():  # and the read did not take the room it found
                return
        # The lease starts when the statement is sent: never later than the database thinks
        # (its now() is the statement's start).
        self.leased = asyncio.get_running_loop().time()
        params = self.t.claim | {"lease": self.ctx.lease}
        if not await self._claim_statement(queries.EXTEND_LEASE, params):
            raise _LostClaim
        if not self._lease_covers_a_post():
            raise _SlowDatabase("the lease extension came back too late to cover a POST")

    def _spare(self) -> float:
        """The room a lease keeps beyond a POST's deadline: half of what is left of the lease
        after a deadline (42.5 s by default), at least a second."""
        return max(1.0, (self.ctx.lease - self.ctx.deadline) / 2)

    def _lease_covers_a_post(self) -> bool:
        """Whether what is left of the lease, by this worker's clock, covers a POST's deadline
        (checked right before the POST, after the body was encoded and signed)."""
        return self._lease_age() < self.ctx.lease - self.ctx.deadline

    def _spare_left(self) -> bool:
        return self._lease_age() < self.ctx.lease - self.ctx.deadline - self._spare()

    def _lease_age(self) -> float:
        """Seconds since the last take-over or extension was sent (the lease is no younger)."""
        return asyncio.get_running_loop().time() - self.leased

    async def _claim_statement(self, statement: str, params: dict[str, Any]) -> bool:
        """Whether the statement found the claim (the read-ahead goes on either way: a claim
        read that finds too short a lease is followed by an extension, not a stop)."""
        async with self.ctx.pool.connection() as conn:
            return bool((await conn.execute(statement, params)).rowcount == 1)

    async def _post(self, n: int, body: bytes, headers: dict[str, str]) -> Answer:
        try:
            answer = await self.ctx.sender.post(self.t.endpoint_url, body, headers)
        except asyncio.CancelledError:  # shutdown, mid-POST: the receiver may still be
            self.ctx.interrupted.add(self.t.job.job_id)  # reading it (see hand_back)
            raise
        _delivered(answer.outcome).inc()
        metrics.DELIVERY_DURATION.observe(answer.seconds)
        self.attempts.append(
            {
                "batch": self.batches + 1,
                "rows": n,
                "http_status": answer.http_status,
                "latency_ms": round(answer.seconds * 1000),
                "error_class": answer.error_class,
            }
        )
        if not answer.ok:
            log.info(
                "batch_failed",
                extra=_fields(self.t)
                | {
                    "batch": self.batches + 1,
                    "http_status": answer.http_status,
                    "error_class": answer.error_class,
                },
            )
        return answer

    def _delivered(self, page: list[Row]) -> None:
        self.sent += len(page)
        self.batches += 1
        self.position = rows.position(page[-1])
        metrics.ROWS_DELIVERED.inc(len(page))
        if self.batches % self.ctx.checkpoint_batches == 0 and self._next is not None:
            self.seq += 1
            ts, key = self.position
            job = self.t.job
            attempts, self.attempts = tuple(self.attempts), []
            self.ctx.report(
                Checkpoint(
                    job.job_id,
                    self.t.holder,
                    job.subscription,
                    self.seq,
                    ts,
                    str(key),
                    self.sent,
                    job.window_start,
                    job.window_end,
                    attempts,
                )
            )

    def _cancel_read(self) -> None:
        if self._next is not None:
            self._next.cancel()
            self._next = None

    def outcome(self, answer: Answer) -> Outcome:
        """The window's outcome, with its attempt-log rows not yet handed on."""
        self._cancel_read()
        job, failed_after = self.t.job, self.position if not answer.ok else None
        return Outcome(
            job_id=job.job_id,
            holder=self.t.holder,
            subscription=job.subscription,
            window_start=job.window_start,
            window_end=job.window_end,
            failures=job.failures,
            ok=answer.ok,
            rows=self.sent,
            batches=self.batches,
            http_status=answer.http_status,
            error_class=answer.error_class,
            error=answer.error,
            retry_after=answer.retry_after,
            position_ts=failed_after[0] if failed_after else None,
            position_key=str(failed_after[1]) if failed_after else None,
            attempts=tuple(self.attempts),
        )


async def _requeue(target: Target, error: BaseException) -> Disposition:
    log.warning("window_requeued", extra=_fields(target) | {"error": error_text(error)})
    await asyncio.sleep(1.0)  # no hot loop while the database is away
    return Disposition.REQUEUE


def _fields(t: Target) -> dict[str, Any]:
    return {
        "subscription": t.job.subscription,
        "job": t.job.job_id,
        "window_start": t.job.window_start.isoformat(),
        "window_end": t.job.window_end.isoformat(),
    }
