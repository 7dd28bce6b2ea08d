"""What the producer reads from each MariaDB/MySQL source: its clock, the writes still in
flight, and the newest change of each of its WatchTables.

Every source is read by its own task, on its own bounded pool, within its own timeout: a
source that is down or slow only leaves its own subscriptions unclaimed. A reading stays
safe however old it is (every write that could still land at or below its end had finished
when it was taken, and later writes stamp later seconds), so the claim loop takes the newest
reading of each source whenever it has one, and never waits for a source.
"""

from __future__ import annotations

import asyncio
import logging

from apievents.common import metrics, mysql
from apievents.common.logs import error_text
from apievents.common.mysql_horizon import BlindSource, check_privileges, read
from apievents.common.mysql_horizon import Reading as Reading
from apievents.common.sources import Source
from apievents.common.watchtable import WatchTable

log = logging.getLogger(__name__)
MIN_INTERVAL = 0.25  # seconds between readings of one source
STOP_SECONDS = 5.0  # the longest a stopping watcher is waited for


class Watcher:
    """Reads one source every tick, on its own task, and keeps the newest reading."""

    def __init__(self, source: Source, size: int, timeout: float, tick: float) -> None:
        self.source = source
        self.pool = mysql.Pool(source.name, source.address, size, timeout)
        # INNODB_TRX is refreshed only after 0.1 s without readers (common/mysql_horizon.py)
        self.tick = max(tick, MIN_INTERVAL)
        self.tables: list[WatchTable] = []
        self.reading: Reading | None = None  # taken by the claim loop
        self.blind: str | None = None
        self._checked = False
        self._healthy: bool | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start reading in the background."""
        self.task = asyncio.create_task(self._run(), name=f"source-{self.source.name}")

    async def stop(self) -> None:
        """Stop reading and close the pool; a reading that will not end is left behind after
        STOP_SECONDS, so a stuck source never holds the producer's shutdown."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait([self.task], timeout=STOP_SECONDS)
            if not self.task.done():
                log.warning("source_watcher_not_stopped", extra={"source": self.source.name})
        self.pool.close()

    async def read_once(self) -> None:
        """One reading (after the privilege check, once per connection to the source)."""
        if not self._checked:
            await check_privileges(self.pool)
            self._checked = True
        self.reading = await read(self.pool, self.tables, share=True)

    async def _run(self) -> None:
        name = self.source.name
        while True:
            try:
                await self.read_once()
                self._health(True)
            except BlindSource as e:
                self.blind = str(e)
                self._health(False, str(e))
                return  # never read a blind source: its window ends could skip changes
            except (mysql.SourceUnavailable, mysql.Error) as e:
                metrics.SOURCE_ERRORS.labels(name).inc()
                self._health(False, error_text(e))
            except Exception as e:  # unexpected: reported, and the next tick tries again
                log.exception("source_read_failed", extra={"source": name})
                metrics.SOURCE_ERRORS.labels(name).inc()
                self._health(False, error_text(e))
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # an error raised while cancelling
                raise asyncio.CancelledError  # (by some clean-up) must not keep it reading
            await asyncio.sleep(self.tick)

    def _health(self, up: bool, error: str = "") -> None:
        metrics.SOURCE_UP.labels(self.source.name).set(1 if up else 0)
        if up != self._healthy:  # log transitions, not every failed tick
            extra = {"source": self.source.name} | ({"error": error} if error else {})
            log.log(
                logging.INFO if up else logging.WARNING,
                "source_up" if up else "source_down",
                extra=extra,
            )
            self._healthy = up
