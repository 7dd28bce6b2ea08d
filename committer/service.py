"""The committer service: consume outcomes, apply them in batches, then ack them.

An outcome is acked only after the transaction that applied it committed, so a crash at any
point redelivers it; applying it twice is harmless because the update is a compare-and-set.
"""

from __future__ import annotations

import logging

import kombu
import psycopg
from psycopg_pool import ConnectionPool

from apievents.committer.apply import apply_batch
from apievents.common import db, metrics
from apievents.common.broker import Broker, drain
from apievents.common.lifecycle import Lifecycle, Wired, readiness
from apievents.common.logs import error_text
from apievents.common.messages import Checkpoint, MessageError, Outcome, parse_report
from apievents.common.retry import RetryPolicy
from apievents.common.settings import Settings

log = logging.getLogger(__name__)


class Committer:
    """Applies up to ``batch`` outcomes per transaction."""

    def __init__(
        self,
        broker: Broker,
        pool: ConnectionPool,
        policy: RetryPolicy,
        lifecycle: Lifecycle,
        *,
        batch: int,
        linger: float,
        disable_after: float = 259200.0,
    ) -> None:
        self.broker = broker
        self.pool = pool
        self.policy = policy
        self.lifecycle = lifecycle
        self.batch = batch
        self.linger = linger
        self.disable_after = disable_after
        self._pending: list[tuple[kombu.Message, Outcome | Checkpoint]] = []

    def run(self) -> None:
        """Serve until stopped, reconnecting after broker or database trouble."""
        self.lifecycle.run_until_stopped("committer", self._session)

    def _session(self) -> None:
        self._pending.clear()  # unacked messages of a dead connection are redelivered
        with self.broker.connection() as conn:
            self.lifecycle.connected.set()
            consumer = kombu.Consumer(
                conn.channel(),
                queues=[self.broker.topology.outcomes],
                on_message=self._on_message,
                prefetch_count=self.batch,
            )
            consumer.consume()
            while not self.lifecycle.stop.is_set():
                self._collect(conn)
                self._apply()
            consumer.cancel()
            self._apply()

    def _on_message(self, message: kombu.Message) -> None:
        try:
            self._pending.append((message, parse_report(message.body)))
        except MessageError as e:
            log.error("outcome_unparseable", extra={"error": str(e)})
            message.reject(requeue=False)

    def _collect(self, conn: kombu.Connection) -> None:
        """Wait for a first outcome, then linger briefly so a batch can fill."""
        drain(conn, 0.5)
        while self._pending and len(self._pending) < self.batch and drain(conn, self.linger):
            pass

    def _apply(self) -> None:
        if not self._pending:
            return
        outcomes = [o for _, o in self._pending]
        try:
            with self.pool.connection() as conn:
                results = apply_batch(conn, outcomes, self.policy, self.disable_after)
        except psycopg.OperationalError:
            raise  # transient: the session reconnects and the batch is redelivered
        except psycopg.Error as e:
            log.error("commit_batch_failed", extra={"error": error_text(e)})
            self._apply_one_by_one()
            return
        self._ack(self._pending, results)
        self._pending = []

    def _apply_one_by_one(self) -> None:
        """Isolate an outcome the database refuses, so it cannot block the others."""
        pending, self._pending = self._pending, []
        for message, outcome in pending:
            try:
                with self.pool.connection() as conn:
                    (result,) = apply_batch(conn, [outcome], self.policy, self.disable_after)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as e:
                log.error(
                    "outcome_refused",
                    extra={
                        "subscription": outcome.subscription,
                        "job": outcome.job_id,
                        "error": error_text(e),
                    },
                )
                message.reject(requeue=False)
                continue
            self._ack([(message, outcome)], [result])

    @staticmethod
    def _ack(applied: list[tuple[kombu.Message, Outcome | Checkpoint]], results: list[str]) -> None:
        metrics.COMMIT_BATCH_SIZE.observe(len(results))
        for (message, outcome), result in zip(applied, results, strict=True):
            message.ack()
            metrics.WINDOWS_COMMITTED.labels(result).inc()
            log.info(
                "outcome_applied",
                extra={
                    "subscription": outcome.subscription,
                    "job": outcome.job_id,
                    "result": result,
                    **_window(outcome),
                },
            )


def build(settings: Settings, lifecycle: Lifecycle) -> Wired:
    """Wire a Committer from settings; returns it and a closer for its resources."""
    pool = db.pool(settings.database_url, 2, "committer")
    committer = Committer(
        Broker(settings.broker_url, settings.queue_prefix, settings.broker_heartbeat),
        pool,
        RetryPolicy(settings.retry_base_seconds, settings.retry_cap_seconds),
        lifecycle,
        batch=settings.commit_batch,
        linger=settings.commit_linger_seconds,
        disable_after=settings.disable_after_seconds,
    )
    return Wired(committer, pool.close, readiness(pool, lifecycle))


def _window(report: Outcome | Checkpoint) -> dict[str, str]:
    if isinstance(report, Checkpoint):
        return {"window_start": report.position_ts.isoformat()}
    return {
        "window_start": report.window_start.isoformat(),
        "window_end": report.window_end.isoformat(),
    }
