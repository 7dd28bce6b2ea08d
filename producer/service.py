"""The producer service: every tick, claim due subscriptions and publish their jobs.

The claim is committed before the publish. If the producer dies in between, or the broker
loses the job, the claim's lease expires and the window is issued again: the database is the
source of truth and the broker only distributes work.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import kombu
from psycopg_pool import ConnectionPool

from apievents.common import db, metrics, queries, watermark
from apievents.common.broker import Broker, StreamPublisher, Unconfirmed, drain
from apievents.common.lifecycle import ConfigurationError, Lifecycle, Wired, readiness
from apievents.common.messages import Job
from apievents.common.settings import Settings
from apievents.common.watermark import Horizon
from apievents.producer.claim import claim_due, release
from apievents.producer.lag import largest_lag

log = logging.getLogger(__name__)
LAG_INTERVAL = 5.0  # seconds between lag measurements
PRUNE_INTERVAL = 60.0  # seconds between attempt-log prunes


class UnsafeRoleError(ConfigurationError):
    """Open transactions are invisible to this role or database, so no safe watermark exists."""


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
            blind = watermark.can_see_every_transaction(db_conn)
        if blind:
            raise UnsafeRoleError(blind)
        with self.broker.connection() as conn:
            self.lifecycle.connected.set()
            publisher = self.broker.stream_publisher(conn)
            while not self.lifecycle.stop.is_set():
                with self.pool.connection() as db_conn:
                    claimed = claim_due(db_conn, self.claim_batch, self.lease_seconds, self.margin)
                    if time.monotonic() >= self._next_lag:
                        clock = claimed.horizon.clock
                        metrics.SUBSCRIPTION_LAG.set(max(0.0, largest_lag(db_conn, clock)))
                        self._next_lag = time.monotonic() + LAG_INTERVAL
                    if time.monotonic() >= self._next_prune:
                        db_conn.execute(
                            queries.PRUNE_ATTEMPTS, {"retention": self.attempt_retention}
                        )
                        self._next_prune = time.monotonic() + PRUNE_INTERVAL
                metrics.SUBSCRIPTIONS_DUE.set(claimed.due)
                self._watch_hold(claimed.horizon)
                self._publish(publisher, claimed.jobs)
                if claimed.due < self.claim_batch:  # a full batch means more are due now
                    self._idle(conn)

    def _idle(self, conn: kombu.Connection) -> None:
        """Wait for the next tick reading the connection, so heartbeats keep flowing."""
        deadline = time.monotonic() + self.tick_seconds
        step = min(1.0, self.broker.heartbeat / 4)  # several reads per heartbeat interval
        while not self.lifecycle.stop.is_set() and (left := deadline - time.monotonic()) > 0:
            drain(conn, min(left, step))

    def _watch_hold(self, horizon: Horizon) -> None:
        hold = horizon.hold_seconds
        metrics.WATERMARK_HOLD.set(hold)
        if hold > self.warn_seconds and time.monotonic() >= self._next_warning:
            extra = {"hold_seconds": round(hold, 3), "hidden_transactions": horizon.hidden}
            log.warning("watermark_held", extra=extra)
            self._next_warning = time.monotonic() + 60

    def _publish(self, publisher: StreamPublisher, jobs: list[Job]) -> None:
        """Publish a tick's jobs with streamed confirms; give back claims that did not make it."""
        if not jobs:
            return
        try:
            publisher.publish_all([j.to_bytes() for j in jobs], "jobs")
        except Unconfirmed as e:
            # Only a nacked job was surely never routed; one whose confirm did not come (or
            # whose connection failed, raised below) keeps its claim until the lease runs out.
            self._release([jobs[i] for i in e.refused])
            metrics.JOBS_PUBLISHED.inc(len(jobs) - len(e.indexes))
            log.warning(
                "jobs_unconfirmed", extra={"jobs": len(e.indexes), "refused": len(e.refused)}
            )
            return
        metrics.JOBS_PUBLISHED.inc(len(jobs))

    def _release(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        try:
            with self.pool.connection() as conn:
                release(conn, jobs)
        except Exception as e:  # the lease re-issues them anyway; the publish error matters more
            log.warning("release_failed", extra={"jobs": len(jobs), "error": str(e)})


def build(settings: Settings, lifecycle: Lifecycle) -> Wired:
    """Wire a Producer from settings; returns it and a closer for its resources."""
    pool = db.pool(settings.database_url, 2, "producer")
    producer = Producer(
        Broker(settings.broker_url, settings.queue_prefix, settings.broker_heartbeat),
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
