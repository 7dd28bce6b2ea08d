"""Delivering one window: take over the claim, then page, POST and extend the lease per batch."""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from apievents.common import metrics, queries, registry
from apievents.common.broker import TRANSIENT_ERRORS
from apievents.common.logs import error_text
from apievents.common.messages import Checkpoint, Job, Outcome, new_id
from apievents.common.registry import WatchTable
from apievents.worker import rows, signing
from apievents.worker.sender import Answer, Sender

log = logging.getLogger(__name__)


class Disposition(enum.Enum):
    """What to do with a job message when there is no outcome to hand on."""

    STALE = "stale"  # the claim moved on (superseded, paused, removed): ack and drop
    REQUEUE = "requeue"  # database trouble or shutdown: hand the job back to the broker


class _LostClaim(Exception):
    """The lease could not be extended: the claim was revoked, taken over, or is gone."""


@dataclass(frozen=True)
class Target:
    """Where a window resumes, and where and how its rows are sent."""

    start: datetime
    cursor_key: str | None
    seq: int
    endpoint_url: str
    customer_key: str
    workstation: str
    secrets: tuple[str, ...]
    watch_table: WatchTable

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Target:
        """From a TAKE_OVER row."""
        start, cursor_key, seq, url, customer_key, workstation, secret, previous = row[:8]
        live = tuple(s for s in (secret, previous) if s)
        return cls(
            start,
            cursor_key,
            seq,
            url,
            customer_key,
            workstation,
            live,
            WatchTable.from_row(row[8:]),
        )

    def headers(self, subscription: int, body: bytes, default_workstation: str) -> dict[str, str]:
        """Open Dental's webhook headers plus the Standard Webhooks signature headers."""
        return {
            "Content-Type": "application/json",
            "Authorization": self.customer_key,
            "Workstation": self.workstation or default_workstation,
            "Event-Type": f"WatchTable: {self.watch_table.name}",
        } | signing.headers(subscription, body, self.secrets, int(time.time()))


Report = Callable[[Checkpoint], None]


class WindowRunner:
    """Runs one job to an Outcome (to hand on) or a Disposition. Thread-safe."""

    def __init__(
        self,
        pool: ConnectionPool,
        sender: Sender,
        *,
        batch_size: int,
        lease_seconds: float,
        workstation: str,
        checkpoint_batches: int,
    ) -> None:
        self.pool = pool
        self.sender = sender
        self.batch_size = batch_size
        self.lease = lease_seconds
        self.workstation = workstation
        self.checkpoint_batches = checkpoint_batches
        self._tables: dict[str, tuple[float, WatchTable]] = {}

    def run(self, job: Job, abort: threading.Event, report: Report) -> Outcome | Disposition:
        """Deliver the job's window, stopping at the first answer that is not 200.

        Every ``checkpoint_batches`` batches, ``report`` hands on a Checkpoint, so a failure
        later in a large window resends at most that many batches.
        """
        holder = new_id()
        try:
            with self.pool.connection() as conn:
                target, first = self._take_over(conn, job, holder)
                if target is None:
                    self._not_taken(conn, job)
                    return Disposition.STALE
                pages = _Pages(conn, job, holder, target, self.lease, self.batch_size, first)
                try:
                    result = self._deliver(job, holder, target, pages, abort, report)
                    if isinstance(result, Outcome):  # the committer writes its attempt log
                        result = replace(result, attempts=pages.take_attempts())
                    return result
                finally:
                    pages.close()
        except _LostClaim:
            # Report it: if an edit revoked the claim, the committer drops it now rather than
            # when the lease runs out. Any other loss makes this outcome stale.
            log.info("claim_lost", extra=_fields(job))
            return self._outcome(job, holder, 0, 0, Answer(False, None, "stopped", "claim lost"))
        except TRANSIENT_ERRORS as e:
            log.warning("window_requeued", extra=_fields(job, error=error_text(e)))
            abort.wait(1.0)  # no hot loop while the database is away
            return Disposition.REQUEUE
        except (psycopg.Error, rows.RowEncodingError) as e:
            kind = "serialization" if isinstance(e, rows.RowEncodingError) else "database"
            return self._outcome(job, holder, 0, 0, Answer(False, None, kind, error_text(e)))

    def _take_over(
        self, conn: psycopg.Connection[Any], job: Job, holder: str
    ) -> tuple[Target | None, list[tuple[Any, ...]] | None]:
        """Become the claim's holder and, in the same round trip, read the first page.

        The page is read speculatively from the job's position; it is used only if the
        subscription is still there (a resumed job may have moved on by checkpoints).
        """
        params = {"holder": holder, "lease": self.lease, "num": job.subscription, "job": job.job_id}
        wt = self._watch_table(conn, job.watch_table)
        if wt is None:
            row = conn.execute(queries.TAKE_OVER, params).fetchone()
            return (None if row is None else Target.from_row(row)), None
        after = (job.window_start, job.after_key) if job.after_key is not None else None
        try:
            with conn.pipeline():
                taken = conn.execute(queries.TAKE_OVER, params)
                page = rows.page_cursor(
                    conn, wt, job.window_start, job.window_end, after, self.batch_size
                )
        except psycopg.OperationalError:
            raise
        except psycopg.Error:
            # The page failed (a dropped table, say) and took the take-over down with it in
            # the pipeline's implicit transaction: take over alone, let the read report it.
            return self._take_over(conn, replace(job, watch_table=None), holder)
        row = taken.fetchone()
        if row is None:
            return None, None
        target = Target.from_row(row)
        same = (target.start, target.cursor_key, target.watch_table) == (
            job.window_start,
            job.after_key,
            wt,
        )
        return target, page.fetchall() if same else None

    @staticmethod
    def _not_taken(conn: psycopg.Connection[Any], job: Job) -> None:
        """Say why a job was dropped: another worker still holds its claim, or it moved on."""
        row = conn.execute(
            queries.CLAIM_BUSY, {"num": job.subscription, "job": job.job_id}
        ).fetchone()
        log.info("claim_busy" if row and row[0] else "job_stale", extra=_fields(job))

    def _watch_table(self, conn: psycopg.Connection[Any], name: str | None) -> WatchTable | None:
        """Registry entries, cached briefly: one is never changed while subscriptions use it."""
        if name is None:
            return None
        cached = self._tables.get(name)
        if cached is None or cached[0] < time.monotonic():
            try:
                cached = (time.monotonic() + 60, registry.get(conn, name))
            except registry.RegistryError:
                return None
            self._tables[name] = cached
        return cached[1]

    def _deliver(
        self,
        job: Job,
        holder: str,
        target: Target,
        pages: _Pages,
        abort: threading.Event,
        report: Report,
    ) -> Outcome | Disposition:
        wt = target.watch_table
        sent = batches = 0
        position: tuple[Any, Any] | None = None  # of the last row answered 200
        seq = target.seq
        after = (target.start, target.cursor_key) if target.cursor_key is not None else None
        pages.prefetch(after)
        while True:
            if abort.is_set():
                return Disposition.REQUEUE
            page = pages.get()
            if not page:
                break
            if batches:  # the take-over set the lease for the first batch
                pages.extend_lease()  # right before sending: a rewound or superseded window stops
            more = len(page) == self.batch_size
            if more:  # read the next page while this one is on the wire
                pages.prefetch(rows.position(page[-1]))
            body = rows.encode(wt, page)
            headers = target.headers(job.subscription, body, self.workstation)
            answer = self.sender.post(target.endpoint_url, body, headers)
            metrics.DELIVERIES.labels(answer.outcome).inc()
            metrics.DELIVERY_DURATION.observe(answer.seconds)
            pages.log_attempt(batches + 1, len(page), answer)
            if not answer.ok:
                log.info(
                    "batch_failed",
                    extra=_fields(
                        job,
                        batch=batches + 1,
                        http_status=answer.http_status,
                        error_class=answer.error_class,
                    ),
                )
                return self._outcome(job, holder, sent, batches, answer, position)
            sent += len(page)
            batches += 1
            position = rows.position(page[-1])
            metrics.ROWS_DELIVERED.inc(len(page))
            if not more:
                break
            if batches % self.checkpoint_batches == 0:
                seq += 1
                ts, key = position
                report(Checkpoint(job.job_id, holder, job.subscription, seq, ts, str(key), sent))
        return self._outcome(job, holder, sent, batches, Answer(True, 200))

    @staticmethod
    def _outcome(
        job: Job,
        holder: str,
        sent: int,
        batches: int,
        answer: Answer,
        position: tuple[Any, Any] | None = None,
    ) -> Outcome:
        return Outcome(
            job_id=job.job_id,
            holder=holder,
            subscription=job.subscription,
            window_start=job.window_start,
            window_end=job.window_end,
            failures=job.failures,
            ok=answer.ok,
            rows=sent,
            batches=batches,
            http_status=answer.http_status,
            error_class=answer.error_class,
            error=answer.error,
            retry_after=answer.retry_after,
            position_ts=position[0] if position and not answer.ok else None,
            position_key=str(position[1]) if position and not answer.ok else None,
        )


def _fields(job: Job, **extra: Any) -> dict[str, Any]:
    return {
        "subscription": job.subscription,
        "job": job.job_id,
        "window_start": job.window_start.isoformat(),
        "window_end": job.window_end.isoformat(),
        **extra,
    }


class _Pages:
    """A window's pages, read on one held connection, one page ahead of the sender.

    Each read is a single pipelined round trip: the attempts logged since the last read and
    the page. Reading the next page while the current one is POSTed overlaps the database's
    and the endpoint's waits. The lease is extended right before each POST, not at read time,
    so a window whose claim moved on (rewind, take-over) never sends another batch.
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        job: Job,
        holder: str,
        target: Target,
        lease: float,
        batch_size: int,
        first: list[tuple[Any, ...]] | None = None,
    ) -> None:
        self.conn = conn
        self._first = first  # read together with the take-over
        self.job = job
        self.lease = {"lease": lease, "num": job.subscription, "job": job.job_id, "holder": holder}
        self.target = target
        self.batch_size = batch_size
        self._attempts: list[dict[str, Any]] = []
        self._reader: ThreadPoolExecutor | None = None  # only windows of 2+ pages need one
        self._reads = 0
        self._next: Future[list[tuple[Any, ...]]] | None = None

    def prefetch(self, after: tuple[Any, Any] | None) -> None:
        """Start reading the page after ``after`` (None: from the window start).

        The first page was read with the take-over, or is read right here; later ones are
        read on a helper thread, ahead of the sender.
        """
        self._reads += 1
        if self._reads == 1:
            first: Future[list[tuple[Any, ...]]] = Future()
            try:
                page = self._first if self._first is not None else self._read(after, ())
                first.set_result(page)
            except BaseException as e:  # surfaces from get(), like a prefetched read's error
                first.set_exception(e)
            self._next = first
            return
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="pages")
        self._next = self._reader.submit(self._read, after, self.take_attempts())

    def get(self) -> list[tuple[Any, ...]]:
        """The prefetched page; raises what reading it raised (a database error)."""
        assert self._next is not None
        page, self._next = self._next.result(), None
        return page

    def log_attempt(self, batch: int, count: int, answer: Answer) -> None:
        """Queue an attempt-log row: written with the next read, handed on with the outcome
        (take_attempts), or written on close."""
        self._attempts.append(
            {
                "batch": batch,
                "rows": count,
                "http_status": answer.http_status,
                "latency_ms": round(answer.seconds * 1000),
                "error_class": answer.error_class,
            }
        )

    def extend_lease(self) -> None:
        """Extend the lease now, on the page thread (one connection, one user at a time)."""
        assert self._reader is not None
        if not self._reader.submit(self._extend).result():
            raise _LostClaim

    def _extend(self) -> int:
        return self.conn.execute(queries.EXTEND_LEASE, self.lease).rowcount

    def take_attempts(self) -> tuple[dict[str, Any], ...]:
        """The queued attempt-log rows, which the caller now writes or hands on."""
        taken, self._attempts = tuple(self._attempts), []
        return taken

    def _rows(self, attempts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        where = {
            "num": self.job.subscription,
            "window_start": self.job.window_start,
            "window_end": self.job.window_end,
        }
        return [a | where for a in attempts]

    def close(self) -> None:
        """Let a read in flight finish, write the queued attempts, release the thread."""
        if self._next is not None:
            wait([self._next])
        if self._reader is not None:
            self._reader.shutdown()
        if self._attempts:
            try:
                self.conn.cursor().executemany(queries.RECORD_ATTEMPT, self._rows(self._attempts))
            except psycopg.Error as e:  # the log is for operators; delivery state is intact
                log.warning("attempt_log_failed", extra=_fields(self.job, error=error_text(e)))

    def _read(
        self, after: tuple[Any, Any] | None, attempts: Sequence[dict[str, Any]]
    ) -> list[tuple[Any, ...]]:
        conn, wt = self.conn, self.target.watch_table
        with conn.pipeline():
            if attempts:
                conn.cursor().executemany(queries.RECORD_ATTEMPT, self._rows(attempts))
            page = rows.page_cursor(
                conn, wt, self.target.start, self.job.window_end, after, self.batch_size
            )
        return page.fetchall()
