"""The worker service: take jobs in batches, run their windows, hand on outcomes, then ack.

One asyncio loop runs everything: the broker session, and (worker/windows.py) the database
pool and the HTTP client. Jobs that are ready are started in batches, up to ``worker_batch``
or after a short linger; every window then runs as its own task, so a hanging endpoint delays
no other window's outcome. Outcomes and checkpoints go out in confirmed bursts, one broker
message each. A job message may carry several windows; it is settled (acked or requeued) in
exactly one place, ``_settle``, once each of its windows is: acked when every outcome was
confirmed, requeued if any window had to be given back.

A window outlives a lost broker connection: its claim in the database, not the broker, says
who may send. Its outcome goes out on the next session; its message went back to the queue
with the old connection, and whoever gets it finds the claim busy or gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from apievents.common import broker, metrics
from apievents.common.broker import TRANSIENT_ERRORS, BrokerLost, Message, Session, Unconfirmed
from apievents.common.lifecycle import Lifecycle, Wired, async_readiness
from apievents.common.logs import error_text
from apievents.common.messages import (
    Checkpoint,
    Job,
    MessageError,
    Outcome,
    Report,
    parse_jobs,
    reports_to_bytes,
)
from apievents.common.settings import Settings
from apievents.common.topology import JOBS, OUTCOMES
from apievents.worker.delivery import Disposition
from apievents.worker.windows import DatabaseWindows, OnCheckpoint, Result, Windows

log = logging.getLogger(__name__)
CONFIRM_TIMEOUT = 10.0  # seconds to wait for the broker to confirm a burst of reports
REPORT_LINGER = 0.01  # seconds a ready report waits for others to share its message

OpenWindows = Callable[[Settings, OnCheckpoint], Awaitable[Windows]]


@dataclass(eq=False)
class _Carrier:
    """A job message and how many of its windows are not settled yet."""

    message: Message
    unsettled: int
    requeue: bool = False


@dataclass(eq=False)
class _Job:
    """One window of a job message and, once started, its result."""

    job: Job
    carrier: _Carrier
    result: asyncio.Future[Result] | None = None


class Worker:
    """Delivers up to ``worker_concurrency`` windows at once."""

    def __init__(
        self,
        settings: Settings,
        lifecycle: Lifecycle,
        open_windows: OpenWindows = DatabaseWindows.open,
    ) -> None:
        self.s = settings
        self.lifecycle = lifecycle
        self.open_windows = open_windows
        self.windows: Windows | None = None  # made on the service's own loop
        self.session: Session | None = None
        self._ready: list[_Job] = []
        self._running = 0  # windows started (taken over) and not finished
        self._job_ids: set[str] = set()  # of every window not yet settled
        self._linger: asyncio.Handle | None = None  # a dispatch that is due
        self._jobs: set[_Job] = set()  # every job message not yet settled
        self._outbox: list[tuple[Report, _Job | None]] = []
        self._flush_due = False
        self._publishing = 0  # bursts waiting for their confirms
        self._background: set[asyncio.Future[None]] = set()

    def run(self) -> None:
        """Serve until stopped, reconnecting after broker or database trouble."""
        self.lifecycle.serve("worker", self._serve, self._close)

    async def _serve(self) -> None:
        if self.windows is None:  # the pool and HTTP client live as long as the loop
            self.windows = await self.open_windows(self.s, self._report)
        await self._session()

    async def _close(self) -> None:
        if self.windows is not None:
            await self.windows.close()

    async def _session(self) -> None:
        s = self.s
        session = await broker.connect(s.broker_url, s.queue_prefix, s.broker_heartbeat)
        self.session = session
        try:
            await session.consume(JOBS, prefetch(s), self._on_message)
            self.lifecycle.connected.set()
            self._flush()  # reports that waited for a session
            stopping = asyncio.ensure_future(self._until_stopped())
            either: list[asyncio.Future[Any]] = [stopping, session.closed]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if session.closed.done():
                self._forget_ready()  # not started: the broker redelivers them
                session.closed.result()  # raises BrokerLost
            await session.cancel()
            await self._shut_down()
        finally:
            self.session = None
            await session.close()

    async def _until_stopped(self) -> None:
        while not await self.lifecycle.sleep(3600):
            pass

    # -- taking jobs ---------------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        try:
            jobs = parse_jobs(message.body)
        except MessageError as e:
            log.error("job_unparseable", extra={"error": str(e)})
            message.session.reject(message)
            return
        # A job this worker already runs (a message that repeats one) is never run twice.
        fresh = {j.job_id: j for j in jobs if j.job_id not in self._job_ids}
        if not fresh:
            message.session.ack(message)
            return
        carrier = _Carrier(message, len(fresh))
        entries = [_Job(job, carrier) for job in fresh.values()]
        self._jobs.update(entries)
        self._job_ids.update(fresh)
        metrics.WINDOWS_IN_FLIGHT.inc(len(entries))
        self._ready += entries  # a message's windows always start in the same batch
        if len(self._ready) >= self.s.worker_batch:
            self._dispatch()
        elif self._linger is None:
            loop = asyncio.get_running_loop()
            self._linger = loop.call_later(self.s.worker_linger_seconds, self._dispatch)

    def _forget_ready(self) -> list[_Job]:
        """Jobs not started yet: take them off the list, unsettled."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        ready, self._ready = self._ready, []
        for entry in ready:
            self._jobs.discard(entry)
            self._job_ids.discard(entry.job.job_id)
            metrics.WINDOWS_IN_FLIGHT.dec()
        return ready

    def _dispatch(self) -> None:
        """Start the ready windows, whole messages at a time, while fewer than four POST slots'
        worth run; the rest wait here, not yet taken over, for windows to finish. (Prefetch
        keeps them few: while they wait, only the lease the producer set runs for them.)"""
        self._linger = None
        room = 4 * self.s.worker_concurrency - self._running
        if room <= 0 or not self._ready:
            return  # a window that finishes dispatches again
        n = 0
        while n < len(self._ready) and (n == 0 or n < room):
            carrier = self._ready[n].carrier
            while n < len(self._ready) and self._ready[n].carrier is carrier:
                n += 1
        batch, self._ready = self._ready[:n], self._ready[n:]
        self._running += n
        self._spawn(self._start(batch))

    def _finished(self, n: int) -> None:
        self._running -= n
        if self._ready and self._linger is None:
            self._linger = asyncio.get_running_loop().call_soon(self._dispatch)

    async def _start(self, batch: list[_Job]) -> None:
        assert self.windows is not None
        try:
            results = await self.windows.start([e.job for e in batch])
        except TRANSIENT_ERRORS as e:  # the database is away: give the batch back, unhurried
            log.warning("batch_requeued", extra={"jobs": len(batch), "error": error_text(e)})
            await asyncio.sleep(1.0)
            for entry in batch:
                self._settle(entry, Disposition.REQUEUE)
            self._finished(len(batch))
            return
        except Exception:  # contained: never a requeue loop. The claims' leases run out and
            log.exception("batch_failed", extra={"jobs": len(batch)})  # the producer re-issues
            for entry in batch:
                self._settle(entry, Disposition.STALE)
            self._finished(len(batch))
            return
        late = []
        for entry in batch:
            entry.result = results[entry.job.job_id]
            if entry not in self._jobs:  # handed back while the take-over ran (shutdown)
                entry.result.cancel()
                late.append(entry.job)
                continue
            entry.result.add_done_callback(lambda f, e=entry: self._window_done(e, f))  # type: ignore[misc]
        if late:
            self._finished(len(late))
            await asyncio.gather(*(results[j.job_id] for j in late), return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.windows.hand_back(late)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run in the background, holding a reference (the loop keeps only weak ones)."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- finishing jobs ------------------------------------------------------------------------

    def _window_done(self, entry: _Job, result: asyncio.Future[Result]) -> None:
        self._finished(1)
        if result.cancelled():
            return  # handed back by _shut_down
        outcome = result.result()
        if not isinstance(outcome, Outcome):
            self._settle(entry, outcome)
            return
        level = logging.INFO if not outcome.ok else logging.DEBUG  # one a window: DEBUG if fine
        if log.isEnabledFor(level):
            log.log(level, "window_done", extra=_done_fields(outcome))
        self._outbox.append((outcome, entry))
        self._flush()

    def _report(self, checkpoint: Checkpoint) -> None:
        self._outbox.append((checkpoint, None))
        self._flush()

    def _flush(self) -> None:
        """Hand on what waits in one burst, REPORT_LINGER after the first of it was ready (so
        windows that end close together share a message). Bursts do not wait for each other:
        each awaits its own confirm, so a slow confirm never holds up the next."""
        if not self._flush_due and self._outbox and self.session is not None:
            self._flush_due = True
            asyncio.get_running_loop().call_later(REPORT_LINGER, self._flush_now)

    def _flush_now(self) -> None:
        self._flush_due = False
        if self._outbox and self.session is not None:
            sent, self._outbox = self._outbox, []
            self._spawn(self._publish(self.session, sent))

    async def _publish(self, session: Session, sent: list[tuple[Report, _Job | None]]) -> None:
        self._publishing += 1
        try:
            body = reports_to_bytes([report for report, _ in sent])
            await session.publish([body], OUTCOMES, CONFIRM_TIMEOUT)
        except BrokerLost:
            self._outbox = sent + self._outbox  # the next session hands them on
            return
        except Unconfirmed:  # maybe lost: their jobs go back, and the claims sort it out
            self._settle_all(sent, Disposition.REQUEUE)
            return
        finally:
            self._publishing -= 1
        self._settle_all(sent, None)

    def _settle_all(self, sent: list[tuple[Report, _Job | None]], how: Disposition | None) -> None:
        for _, entry in sent:
            if entry is not None:
                self._settle(entry, how)

    def _settle(self, entry: _Job, how: Disposition | None) -> None:
        """The one place a job message is settled, once all of its windows are: requeued if
        any of them was given back (the others' claims then make them stale, or they run
        again: at least once), else acked (done, or stale)."""
        if entry not in self._jobs:
            return
        self._jobs.discard(entry)
        self._job_ids.discard(entry.job.job_id)
        metrics.WINDOWS_IN_FLIGHT.dec()
        carrier = entry.carrier
        carrier.unsettled -= 1
        carrier.requeue |= how is Disposition.REQUEUE
        if carrier.unsettled:
            return
        message = carrier.message
        if message.session is not self.session:
            return  # its connection died: the broker requeued it already
        if carrier.requeue:
            message.session.requeue(message)
        else:
            message.session.ack(message)

    # -- shutting down -------------------------------------------------------------------------

    async def _shut_down(self) -> None:
        """Let windows in flight finish within the shutdown timeout, then hand back the rest."""
        assert self.windows is not None
        for carrier in {id(e.carrier): e.carrier for e in self._forget_ready()}.values():
            carrier.message.session.requeue(carrier.message)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.s.shutdown_timeout
        while self._jobs and loop.time() < deadline:
            await asyncio.sleep(0.05)
        left = [e for e in self._jobs if e.result is not None and not e.result.done()]
        for entry in left:
            entry.result.cancel()  # type: ignore[union-attr]
        await asyncio.gather(*(e.result for e in left if e.result), return_exceptions=True)
        with contextlib.suppress(Exception):  # no POST in flight now: others may take them
            await self.windows.hand_back([e.job for e in left])
        for entry in list(self._jobs):
            log.info("window_handed_back", extra={"job": entry.job.job_id})
            self._settle(entry, Disposition.REQUEUE)
        session = self.session
        while (self._outbox or self._publishing) and session and not session.closed.done():
            await asyncio.sleep(0.01)  # the last outcomes and their confirms

    @property
    def busy(self) -> int:
        """Job messages not yet settled (for tests and status)."""
        return len(self._jobs)


def _done_fields(outcome: Outcome) -> dict[str, Any]:
    return {
        "subscription": outcome.subscription,
        "job": outcome.job_id,
        "window_start": outcome.window_start.isoformat(),
        "window_end": outcome.window_end.isoformat(),
        "ok": outcome.ok,
        "rows": outcome.rows,
        "error_class": outcome.error_class,
    }


def prefetch(s: Settings) -> int:
    """Job messages one worker holds: about four POST slots' worth of windows when messages
    are full, because a job stays unacked until its outcome's confirm is back, and that wait
    must not idle the POST slots. At least a quarter of the slots in messages, for when each
    carries a single window (light load, or a producer sending one window a message)."""
    windows = max(4 * s.worker_concurrency, s.worker_batch)
    return max(-(-s.worker_concurrency // 4), -(-windows // s.jobs_per_message))


def build(settings: Settings, lifecycle: Lifecycle) -> Wired:
    """Wire a Worker from settings; its resources live and close on its own loop."""
    worker = Worker(settings, lifecycle)
    return Wired(
        worker,
        lambda: None,
        async_readiness(lambda: getattr(worker.windows, "pool", None), lifecycle),
    )
