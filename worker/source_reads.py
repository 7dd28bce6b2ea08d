"""Reading windows of a MariaDB/MySQL source: keyset pages on that source's own pool.

Each source has its own bounded pool and timeout (common/mysql.py), so a slow or unreachable
office fails only its own windows. Rows come back in the same shape as a PostgreSQL page
(common/queries_mysql.select_list); the paging timestamp is made aware (UTC), so positions
and checkpoints compare with window bounds like any other.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from apievents.common import mysql, queries, queries_mysql
from apievents.common.sources import Source
from apievents.common.watchtable import WatchTable

Row = tuple[Any, ...]
SOURCES_TTL = 30.0  # seconds a source's URL is cached; a changed URL opens a new pool


def naive_utc(t: datetime) -> datetime:
    """A bound as the source compares it: UTC wall time (the session's zone)."""
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t


class SourceReads:
    """The worker's pools, one per source, opened when a window first needs one."""

    def __init__(self, state: AsyncConnectionPool, size: int, timeout: float) -> None:
        self.state = state  # apievents' PostgreSQL, where the sources are registered
        self.size = size
        self.timeout = timeout
        self.pools: dict[str, mysql.Pool] = {}
        self._sources: tuple[float, dict[str, Source]] = (0.0, {})

    async def page(
        self,
        wt: WatchTable,
        start: datetime,
        end: datetime,
        after: tuple[Any, Any] | None,
        limit: int,
    ) -> list[Row]:
        """The next ``limit`` rows of a window after the (ts, key) position ``after``."""
        query, args = queries_mysql.window_page(wt, first=after is None)
        if after is None:
            args += [naive_utc(start)]
        else:
            ts = naive_utc(after[0])
            args += [ts, ts, after[1]]
        args += [naive_utc(end), limit]
        found = await (await self._pool(wt.source)).fetch(query, args)
        return [(*row[:-2], row[-2].replace(tzinfo=UTC), row[-1]) for row in found]

    async def _pool(self, name: str) -> mysql.Pool:
        source = (await self._known()).get(name)
        if source is None:
            self._sources = (0.0, {})
            raise mysql.SourceUnavailable(f"no source {name!r}")
        pool = self.pools.get(name)
        if pool is None or pool.address != source.address:
            if pool is not None:
                pool.close()
            pool = self.pools[name] = mysql.Pool(name, source.address, self.size, self.timeout)
        return pool

    async def _known(self) -> dict[str, Source]:
        expires, known = self._sources
        now = asyncio.get_running_loop().time()
        if now >= expires or not known:
            async with self.state.connection() as conn:
                cur = await conn.execute(queries.SOURCE_LIST)
                known = {r[0]: Source(r[0], r[1], r[2]) for r in await cur.fetchall()}
            self._sources = (now + SOURCES_TTL, known)
        return known

    def close(self) -> None:
        """Close every pool's idle connections."""
        for pool in self.pools.values():
            pool.close()
