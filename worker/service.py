"""The worker service: consume jobs, run windows on threads, hand on outcomes, then ack.

The main thread owns the broker connection (kombu channels are not thread-safe): it drains
events, which keeps heartbeats flowing however long a window takes, and it is the only place
that acks or requeues a job. Window threads only compute an Outcome or a Disposition.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import kombu

from apievents.common import db, metrics
from apievents.common.broker import Broker, StreamPublisher, Unconfirmed, drain
from apievents.common.lifecycle import Lifecycle, Wired, readiness
from apievents.common.messages import Checkpoint, Job, MessageError, Outcome
from apievents.common.settings import Settings
from apievents.common.ssrf import EndpointPolicy
from apievents.worker.sender import Sender
from apievents.worker.window import Disposition, WindowRunner

log = logging.getLogger(__name__)


_Result = Outcome | Disposition | Checkpoint


@dataclass
class _InFlight:
    job: Job
    message: kombu.Message
    generation: int
    abort: threading.Event = field(default_factory=threading.Event)


class Worker:
    """Delivers up to ``concurrency`` windows at once."""

    def __init__(
        self,
        broker: Broker,
        runner: WindowRunner,
        lifecycle: Lifecycle,
        *,
        concurrency: int,
        shutdown_timeout: float,
    ) -> None:
        self.broker = broker
        self.runner = runner
        self.lifecycle = lifecycle
        self.concurrency = concurrency
        self.shutdown_timeout = shutdown_timeout
        self._generation = 0
        self._in_flight: dict[int, _InFlight] = {}
        self._done: queue.SimpleQueue[tuple[_InFlight, _Result]] = queue.SimpleQueue()

    def run(self) -> None:
        """Serve until stopped, reconnecting after broker or database trouble."""
        self.lifecycle.run_until_stopped("worker", self._session)

    def _session(self) -> None:
        self._generation += 1
        # Messages of an earlier connection went back to the queue when it died; their windows
        # may still finish here, but only the copy now delivered can be acked.
        self._in_flight.clear()
        with self.broker.connection() as conn:
            self.lifecycle.connected.set()
            publisher = self.broker.stream_publisher(conn)
            consumer = kombu.Consumer(
                conn.channel(),
                queues=[self.broker.topology.jobs],
                on_message=self._on_message,
                prefetch_count=self.concurrency,
            )
            consumer.consume()
            while not self.lifecycle.stop.is_set():
                drain(conn, 0.05)
                self._finish(publisher)
            consumer.cancel()
            self._shut_down(conn, publisher)

    def _on_message(self, message: kombu.Message) -> None:
        if self.lifecycle.stop.is_set():  # delivered just before our cancel reached the broker
            message.requeue()
            return
        try:
            job = Job.from_bytes(message.body)
        except MessageError as e:
            log.error("job_unparseable", extra={"error": str(e)})
            message.reject(requeue=False)
            return
        entry = _InFlight(job, message, self._generation)
        self._in_flight[id(entry)] = entry
        metrics.WINDOWS_IN_FLIGHT.inc()
        threading.Thread(target=self._work, args=(entry,), daemon=True).start()

    def _work(self, entry: _InFlight) -> None:
        try:
            result = self.runner.run(entry.job, entry.abort, lambda cp: self._done.put((entry, cp)))
        except Exception:
            log.exception("window_crashed", extra={"job": entry.job.job_id})
            result = Disposition.REQUEUE
        self._done.put((entry, result))

    def _finish(self, publisher: StreamPublisher) -> None:
        """Hand on everything finished since the last call in one confirmed burst, then ack."""
        done: list[tuple[_InFlight, _Result]] = []
        while True:
            try:
                done.append(self._done.get_nowait())
            except queue.Empty:
                break
        reports = [(i, r) for i, (_, r) in enumerate(done) if isinstance(r, Outcome | Checkpoint)]
        refused: set[int] = set()
        try:
            publisher.publish_all([r.to_bytes() for _, r in reports], "outcomes")
        except Unconfirmed as e:  # not handed on: those jobs go back to the queue
            refused = {reports[i][0] for i in e.indexes}
        for i, (entry, result) in enumerate(done):
            if isinstance(result, Checkpoint):  # progress: handed on, the job stays
                continue
            metrics.WINDOWS_IN_FLIGHT.dec()
            current = self._in_flight.pop(id(entry), None) is not None
            if isinstance(result, Outcome):
                log.info(
                    "window_done",
                    extra={
                        "subscription": result.subscription,
                        "job": result.job_id,
                        "window_start": result.window_start.isoformat(),
                        "window_end": result.window_end.isoformat(),
                        "ok": result.ok,
                        "rows": result.rows,
                        "error_class": result.error_class,
                    },
                )
            if not current:
                continue  # its message went back to the queue with an earlier connection
            if i in refused or result is Disposition.REQUEUE:
                entry.message.requeue()
            else:
                entry.message.ack()  # only after its outcome was confirmed

    def _shut_down(self, conn: kombu.Connection, publisher: StreamPublisher) -> None:
        deadline = time.monotonic() + self.shutdown_timeout
        while self._in_flight and time.monotonic() < deadline:
            drain(conn, 0.05)
            self._finish(publisher)
        for entry in self._in_flight.values():
            entry.abort.set()
            entry.message.requeue()
            log.info("window_handed_back", extra={"job": entry.job.job_id})
        self._in_flight.clear()

    @property
    def busy(self) -> int:
        """Windows in flight (for tests and status)."""
        return len(self._in_flight)


def build(settings: Settings, lifecycle: Lifecycle) -> Wired:
    """Wire a Worker from settings; returns it and a closer for its resources."""
    pool = db.pool(settings.database_url, settings.worker_concurrency + 2, "worker")
    sender = Sender(
        settings.http_timeout,
        settings.http_connect_timeout,
        settings.worker_concurrency,
        EndpointPolicy.from_settings(settings),
        settings.ca_bundle,
    )
    runner = WindowRunner(
        pool,
        sender,
        batch_size=settings.batch_size,
        lease_seconds=settings.lease_seconds,
        workstation=settings.sender_name,
        checkpoint_batches=settings.checkpoint_batches,
    )
    worker = Worker(
        Broker(settings.broker_url, settings.queue_prefix, settings.broker_heartbeat),
        runner,
        lifecycle,
        concurrency=settings.worker_concurrency,
        shutdown_timeout=settings.shutdown_timeout,
    )

    def close() -> None:
        sender.close()
        pool.close()

    return Wired(worker, close, readiness(pool, lifecycle))
