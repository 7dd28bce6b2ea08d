"""The producer service: every tick, claim due subscriptions and publish their jobs.

The claim is committed before the publish. If the producer dies in between, or the broker
loses the job, the claim's lease expires and the window is issued again: the database is the
source of truth and the broker only distributes work.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from psycopg_pool import ConnectionPool

from apievents.common import db, metrics, queries
from apievents.common.broker import Broker, StreamPublisher, Unconfirmed
from apievents.common.lifecycle import ConfigurationError, Lifecycle, Wired, readiness
from apievents.common.messages import Job
from apievents.common.settings import Settings
from apievents.producer.claim import can_see_all_transactions, claim_due, release
from apievents.producer.lag import largest_lag

log = logging.getLogger(__name__)
LAG_INTERVAL = 5.0  # seconds between lag measurements
PRUNE_INTERVAL = 60.0  # seconds between attempt-log prunes


class UnsafeRoleError(ConfigurationError):
    """The database role cannot see every open transaction, so no safe watermark exists."""


class Producer:
    """Turns due subscriptions into jobs."""

    def __init__(
        self,
        broker: Broker,
        pool: ConnectionPool,
        lifecycle: Lifecycle,
        *,
        tick_seconds: float,
        claim_batch: int,
        lease_seconds: float,
        margin_seconds: float,
        warn_seconds: float,
        attempt_retention: float = 604800.0,
    ) -> None:
        self.broker = broker
        self.pool = pool
        self.lifecycle = lifecycle
        self.tick_seconds = tick_seconds
        self.claim_batch = claim_batch
        self.lease_seconds = lease_seconds
        self.margin = timedelta(seconds=margin_seconds)
        self.warn_seconds = warn_seconds
        self.attempt_retention = attempt_retention
        self._next_warning = 0.0
        self._next_lag = 0.0
        self._next_prune = 0.0

    def run(self) -> None:
        """Serve until stopped, reconnecting after broker or database trouble."""
        self.lifecycle.run_until_stopped("producer", self._session)

    def _session(self) -> None:
        with self.pool.connection() as db_conn:
            if not can_see_all_transactions(db_conn):
                raise UnsafeRoleError(
                    "the database role must be superuser or have pg_read_all_stats, or open "
                    "transactions of other roles are invisible and changes could be skipped"
                )
        with self.broker.connection() as conn:
            self.lifecycle.connected.set()
            publisher = self.broker.stream_publisher(conn)
            while not self.lifecycle.stop.is_set():
                with self.pool.connection() as db_conn:
                    claimed = claim_due(db_conn, self.claim_batch, self.lease_seconds, self.margin)
                    if time.monotonic() >= self._next_lag:
                        metrics.SUBSCRIPTION_LAG.set(max(0.0, largest_lag(db_conn, claimed.clock)))
                        self._next_lag = time.monotonic() + LAG_INTERVAL
                    if time.monotonic() >= self._next_prune:
                        db_conn.execute(
                            queries.PRUNE_ATTEMPTS, {"retention": self.attempt_retention}
                        )
                        self._next_prune = time.monotonic() + PRUNE_INTERVAL
                metrics.SUBSCRIPTIONS_DUE.set(claimed.due)
                self._watch_hold(claimed.hold_seconds)
                self._publish(publisher, claimed.jobs)
                conn.heartbeat_check()
                if claimed.due < self.claim_batch:  # a full batch means more are due now
                    self.lifecycle.stop.wait(self.tick_seconds)

    def _watch_hold(self, hold: float) -> None:
        metrics.WATERMARK_HOLD.set(hold)
        if hold > self.warn_seconds and time.monotonic() >= self._next_warning:
            log.warning("watermark_held", extra={"hold_seconds": round(hold, 3)})
            self._next_warning = time.monotonic() + 60

    def _publish(self, publisher: StreamPublisher, jobs: list[Job]) -> None:
        """Publish a tick's jobs with streamed confirms; give back claims that did not make it."""
        if not jobs:
            return
        try:
            publisher.publish_all([j.to_bytes() for j in jobs], "jobs")
        except Unconfirmed as e:
            self._release([jobs[i] for i in e.indexes])
            metrics.JOBS_PUBLISHED.inc(len(jobs) - len(e.indexes))
            log.warning("jobs_unconfirmed", extra={"jobs": len(e.indexes)})
            return
        except BaseException:
            self._release(jobs)  # the connection failed mid-batch: re-issue them all now
            raise
        metrics.JOBS_PUBLISHED.inc(len(jobs))

    def _release(self, jobs: list[Job]) -> None:
        try:
            with self.pool.connection() as conn:
                release(conn, jobs)
        except Exception as e:  # the lease re-issues them anyway; the publish error matters more
            log.warning("release_failed", extra={"jobs": len(jobs), "error": str(e)})


def build(settings: Settings, lifecycle: Lifecycle) -> Wired:
    """Wire a Producer from settings; returns it and a closer for its resources."""
    pool = db.pool(settings.database_url, 2, "producer")
    producer = Producer(
        Broker(settings.broker_url, settings.queue_prefix),
        pool,
        lifecycle,
        tick_seconds=settings.tick_seconds,
        claim_batch=settings.claim_batch,
        lease_seconds=settings.lease_seconds,
        margin_seconds=settings.watermark_margin_seconds,
        warn_seconds=settings.watermark_warn_seconds,
        attempt_retention=settings.attempt_retention_seconds,
    )
    return Wired(producer, pool.close, readiness(pool, lifecycle))
