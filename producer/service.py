"""The producer service: every tick, claim due subscriptions and publish their jobs.

The claim is committed before the publish. If the producer dies in between, or the broker
loses the job, the claim's lease expires and the window is issued again: the database is the
source of truth and the broker only distributes work.

The service runs on an asyncio loop, which the broker session needs for its heartbeats; the
claim's SQL is plain psycopg on a worker thread, so a slow database never stalls the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from psycopg_pool import ConnectionPool

from apievents.common import (
    broker,
    db,
    metrics,
    queries,
    registry,
    sources,
    subscriptions,
    watermark,
)
from apievents.common.broker import Session, Unconfirmed
from apievents.common.lifecycle import Blocking, ConfigurationError, Lifecycle, Wired, readiness
from apievents.common.logs import error_text
from apievents.common.messages import Job, jobs_to_bytes
from apievents.common.mysql_horizon import BlindSource, Reading
from apievents.common.settings import Settings
from apievents.common.topology import DEAD_LETTER_CAP, JOBS
from apievents.common.watermark import Horizon
from apievents.producer.claim import Claimed, claim_due, release
from apievents.producer.lag import largest_lag
from apievents.producer.sources import Watcher

log = logging.getLogger(__name__)
LAG_INTERVAL = 5.0  # seconds between lag measurements
# After job messages were dead-lettered (a worker of an older version rejects messages of
# several windows), one window a message for this long.
SINGLE_FOR = 600.0
PRUNE_INTERVAL = 60.0  # seconds between attempt-log prunes
SOURCES_INTERVAL = 5.0  # seconds between looks for added or removed sources and WatchTables


class UnsafeRoleError(ConfigurationError):
    """Open transactions are invisible to this role or database, so no safe watermark exists."""


@dataclass(frozen=True)
class ProducerConfig:
    """What the producer reads from the settings."""

    broker_url: str
    queue_prefix: str
    broker_heartbeat: int
    tick_seconds: float
    claim_batch: int
    lease_seconds: float
    margin_seconds: float
    warn_seconds: float
    attempt_retention: float
    per_customer: int = 0
    confirm_timeout: float = 10.0
    source_connections: int = 4
    source_timeout: float = 10.0
    jobs_per_message: int = 16

    @classmethod
    def from_settings(cls, s: Settings) -> ProducerConfig:
        """The producer's part of the settings."""
        return cls(
            s.broker_url,
            s.queue_prefix,
            s.broker_heartbeat,
            s.tick_seconds,
            s.claim_batch,
            s.lease_seconds,
            s.watermark_margin_seconds,
            s.watermark_warn_seconds,
            s.attempt_retention_seconds,
            s.max_windows_per_customer,
            source_connections=s.source_connections,
            source_timeout=s.source_timeout_seconds,
            jobs_per_message=s.jobs_per_message,
        )


class Producer:
    """Turns due subscriptions into jobs."""

    def __init__(self, config: ProducerConfig, pool: ConnectionPool, lifecycle: Lifecycle) -> None:
        self.config = config
        self.pool = pool
        self.lifecycle = lifecycle
        self.blocking = Blocking(lifecycle)  # its database calls, off the loop
        self.margin = timedelta(seconds=config.margin_seconds)
        self._next_warning = 0.0
        self._next_lag = 0.0
        self._next_prune = 0.0
        self._next_dead = 0.0
        self._dead: int | None = None  # dead letters at the last look
        self._single_until = 0.0
        self._next_sources = 0.0
        self.watchers: dict[str, Watcher] = {}

    def run(self) -> None:
        """Serve until stopped, reconnecting after broker or database trouble."""
        self.lifecycle.serve("producer", self._session)

    async def _session(self) -> None:
        blind = await self.blocking(self._blind)
        if blind:
            raise UnsafeRoleError(blind)
        await self._refresh_sources(first=True)
        c = self.config
        session = await broker.connect(c.broker_url, c.queue_prefix, c.broker_heartbeat)
        try:
            self.lifecycle.connected.set()
            while not self.lifecycle.stop.is_set():
                if time.monotonic() >= self._next_sources:
                    await self._refresh_sources()
                claimed = await self.blocking(self.tick)
                await self.publish(session, claimed.jobs)
                for reading in self._readings():
                    from_source = await self.blocking(self.tick_source, reading)
                    await self.publish(session, from_source.jobs)
                    if from_source.due >= c.claim_batch:
                        claimed = from_source  # more are due now: do not idle
                if time.monotonic() >= self._next_dead:
                    self._dead_letters(await session.dead_letters())
                    self._next_dead = time.monotonic() + LAG_INTERVAL
                if claimed.due < c.claim_batch:  # a full batch means more are due now
                    await self._idle(session)
        finally:
            await session.close()
            await asyncio.gather(*(w.stop() for w in self.watchers.values()))  # at once
            self.watchers.clear()

    async def _refresh_sources(self, first: bool = False) -> None:
        """Start a watcher per source (and stop those of removed sources); give each the
        WatchTables of its source. At start, a reachable source whose user cannot see every
        transaction stops the producer, as a blind PostgreSQL role does; one that is down is
        checked when it comes up, and never read if blind."""
        found, tables = await self.blocking(self._sources_and_tables)
        for name in set(self.watchers) - set(found):
            await self.watchers.pop(name).stop()
        c = self.config
        fresh = []
        for name, source in found.items():
            watcher = self.watchers.get(name)
            if watcher is None or watcher.source.url != source.url:
                if watcher is not None:
                    await watcher.stop()
                watcher = Watcher(source, c.source_connections, c.source_timeout, c.tick_seconds)
                self.watchers[name] = watcher
                fresh.append(watcher)
            watcher.tables = tables.get(name, [])
        if first:  # every source at once: one that is down delays the start by one timeout
            await asyncio.gather(*(self._check_at_start(w) for w in fresh))
        for watcher in fresh:
            watcher.start()
        self._next_sources = time.monotonic() + SOURCES_INTERVAL

    async def _check_at_start(self, watcher: Watcher) -> None:
        try:
            await watcher.read_once()
        except BlindSource as e:
            raise UnsafeRoleError(str(e)) from None
        except Exception as e:  # down or slow: its own task keeps trying
            log.warning(
                "source_down", extra={"source": watcher.source.name, "error": error_text(e)}
            )

    def _sources_and_tables(self) -> tuple[dict[str, sources.Source], dict[str, list[Any]]]:
        with self.pool.connection() as conn:
            found = {s.name: s for s in sources.list_all(conn)}
            tables: dict[str, list[Any]] = {}
            for wt in registry.all_tables(conn):
                if wt.source:
                    tables.setdefault(wt.source, []).append(wt)
        return found, tables

    def _readings(self) -> list[Reading]:
        """The newest reading of each source that has a new one; each is used once."""
        taken = []
        for watcher in self.watchers.values():
            if watcher.reading is not None:
                taken.append(watcher.reading)
                watcher.reading = None
        return taken

    def tick_source(self, reading: Reading) -> Claimed:
        """Claim what is due on one source, with its reading."""
        c = self.config
        with self.pool.connection() as conn:
            claimed = claim_due(
                conn, c.claim_batch, c.lease_seconds, self.margin, c.per_customer, reading
            )
        metrics.SOURCE_WATERMARK_HOLD.labels(reading.source).set(claimed.horizon.hold_seconds)
        return claimed

    def _blind(self) -> str | None:
        with self.pool.connection() as conn:
            return watermark.can_see_every_transaction(conn)

    def tick(self) -> Claimed:
        """Claim what is due (and, now and then, measure lag and prune the attempt log)."""
        with self.pool.connection() as conn:
            c = self.config
            claimed = claim_due(conn, c.claim_batch, c.lease_seconds, self.margin, c.per_customer)
            if time.monotonic() >= self._next_lag:
                clock = claimed.horizon.clock
                metrics.SUBSCRIPTION_LAG.set(max(0.0, largest_lag(conn, clock)))
                self._next_lag = time.monotonic() + LAG_INTERVAL
            if time.monotonic() >= self._next_prune:
                conn.execute(queries.PRUNE_ATTEMPTS, {"retention": self.config.attempt_retention})
                subscriptions.clear_expired_secrets(conn)
                self._next_prune = time.monotonic() + PRUNE_INTERVAL
        metrics.SUBSCRIPTIONS_DUE.set(claimed.due)
        self._watch_hold(claimed.horizon)
        return claimed

    async def _idle(self, session: Session) -> None:
        """Wait for the next tick; a lost broker connection ends the wait (and the session)."""
        sleeper = asyncio.ensure_future(self.lifecycle.sleep(self.config.tick_seconds))
        either: list[asyncio.Future[Any]] = [sleeper, session.closed]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        sleeper.cancel()
        if session.closed.done():
            session.closed.result()  # raises BrokerLost

    def _watch_hold(self, horizon: Horizon) -> None:
        hold = horizon.hold_seconds
        metrics.WATERMARK_HOLD.set(hold)
        if hold > self.config.warn_seconds and time.monotonic() >= self._next_warning:
            extra = {"hold_seconds": round(hold, 3), "hidden_transactions": horizon.hidden}
            log.warning("watermark_held", extra=extra)
            self._next_warning = time.monotonic() + 60

    async def publish(self, session: Session, jobs: list[Job]) -> None:
        """Publish a tick's jobs, up to ``jobs_per_message`` a message, with streamed confirms;
        give back the claims of messages the broker refused."""
        if not jobs:
            return
        n = self.config.jobs_per_message if time.monotonic() >= self._single_until else 1
        groups = [jobs[i : i + n] for i in range(0, len(jobs), n)]
        try:
            await session.publish(
                [jobs_to_bytes(g) for g in groups], JOBS, self.config.confirm_timeout
            )
        except Unconfirmed as e:
            # Only a nacked message was surely never routed; one whose confirm did not come
            # (or whose connection failed, which raises BrokerLost) keeps its claims until the
            # lease runs out, so no second job can run beside one of them.
            refused = [job for i in e.refused for job in groups[i]]
            await self.blocking(self._release, refused)
            unconfirmed = sum(len(groups[i]) for i in e.indexes)
            metrics.JOBS_PUBLISHED.inc(len(jobs) - unconfirmed)
            log.warning("jobs_unconfirmed", extra={"jobs": unconfirmed, "refused": len(refused)})
            return
        metrics.JOBS_PUBLISHED.inc(len(jobs))

    def _dead_letters(self, dead: int) -> None:
        """Watch the dead letters: if they grew while messages carried several windows, a
        worker may be of a version that reads only one (a producer upgraded first). Its
        rejected windows are issued again when their leases run out; until then and for
        SINGLE_FOR, every message carries one window, which every worker reads."""
        metrics.DEAD_LETTERS.set(dead)
        # At its cap the queue drops its oldest letter for each new one, and stops growing.
        grew = self._dead is not None and (dead > self._dead or dead >= DEAD_LETTER_CAP)
        self._dead = dead
        if grew and self.config.jobs_per_message > 1:
            if time.monotonic() >= self._single_until:
                log.warning("jobs_dead_lettered_sending_one_window_a_message", extra={"dead": dead})
            self._single_until = time.monotonic() + SINGLE_FOR

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
    producer = Producer(ProducerConfig.from_settings(settings), pool, lifecycle)
    return Wired(producer, pool.close, readiness(pool, lifecycle))
