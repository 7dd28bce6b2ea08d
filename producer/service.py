"""The producer service: every tick, claim due subscriptions and publish their jobs.

The claim is committed before the publish. If the producer dies in between, or the broker
loses the job, the claim's lease expires and the window is issued again: the database is the
source of truth and the broker only distributes work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from psycopg_pool import ConnectionPool

from common import db, metrics
from common.broker import Broker
from common.lifecycle import Lifecycle
from common.messages import Job
from common.settings import Settings
from producer.claim import claim_due, release

log = logging.getLogger(__name__)


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
    ) -> None:
        self.broker = broker
        self.pool = pool
        self.lifecycle = lifecycle
        self.tick_seconds = tick_seconds
        self.claim_batch = claim_batch
        self.lease_seconds = lease_seconds

    def run(self) -> None:
        """Serve until stopped, reconnecting after broker or database trouble."""
        self.lifecycle.run_until_stopped("producer", self._session)

    def _session(self) -> None:
        with self.broker.connection() as conn:
            publisher = self.broker.publisher(conn)
            while not self.lifecycle.stop.is_set():
                with self.pool.connection() as db_conn:
                    due, jobs = claim_due(db_conn, self.claim_batch, self.lease_seconds)
                metrics.SUBSCRIPTIONS_DUE.set(due)
                self._publish(publisher.publish, jobs)
                conn.heartbeat_check()
                if due < self.claim_batch:  # a full batch means more are due right now
                    self.lifecycle.stop.wait(self.tick_seconds)

    def _publish(self, publish: Callable[[bytes, str], None], jobs: list[Job]) -> None:
        for i, job in enumerate(jobs):
            try:
                publish(job.to_bytes(), "jobs")
            except BaseException:
                self._release(jobs[i:])
                raise
            metrics.JOBS_PUBLISHED.inc()
            log.debug(
                "job_published",
                extra={
                    "subscription": job.subscription,
                    "job": job.job_id,
                    "window_start": job.window_start.isoformat(),
                    "window_end": job.window_end.isoformat(),
                },
            )

    def _release(self, jobs: list[Job]) -> None:
        try:
            with self.pool.connection() as conn:
                release(conn, jobs)
        except Exception as e:  # the lease re-issues them anyway; the publish error matters more
            log.warning("release_failed", extra={"jobs": len(jobs), "error": str(e)})


def build(settings: Settings, lifecycle: Lifecycle) -> tuple[Producer, Callable[[], None]]:
    """Wire a Producer from settings; returns it and a closer for its resources."""
    pool = db.pool(settings.database_url, 2, "producer")
    producer = Producer(
        Broker(settings.broker_url, settings.queue_prefix),
        pool,
        lifecycle,
        tick_seconds=settings.tick_seconds,
        claim_batch=settings.claim_batch,
        lease_seconds=settings.lease_seconds,
    )
    return producer, pool.close
