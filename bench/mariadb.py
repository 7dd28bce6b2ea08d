"""Scenario 7: a MariaDB backfill, ours against a raw MariaDB loop.

The raw loop is the limit of this read: keyset pages of 1000 (the same statement, columns and
opendental payload as ours), encoded and POSTed over one kept-alive connection, with no
watermark, broker or claims.

    python -m bench.mariadb MYSQL_URL WATCH_TABLE_JSON ENDPOINT SECONDS
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import datetime

import httpx
import orjson

from apievents.common import mysql, queries_mysql
from apievents.common.sources import MySQLAddress
from apievents.common.watchtable import WatchTable
from apievents.worker import rows


async def raw(url: str, wt: WatchTable, endpoint: str, seconds: float) -> None:
    """Read and POST every row once, then stop (or after ``seconds``)."""
    pool = mysql.Pool("raw", MySQLAddress.parse(url), 1, 60)
    first, first_args = queries_mysql.window_page(wt, first=True)
    later, later_args = queries_mysql.window_page(wt, first=False)
    end = datetime(2100, 1, 1)
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient() as client:
        page = await pool.fetch(first, [*first_args, datetime(1970, 1, 2), end, 1000])
        while page and time.monotonic() < deadline:
            body = rows.encode(wt, page)
            await client.post(endpoint, content=body, headers={"Content-Type": "application/json"})
            ts, key = page[-1][-2], page[-1][-1]
            page = await pool.fetch(later, [*later_args, ts, ts, key, end, 1000])
    pool.close()


def watch_table_from_json(text: str) -> WatchTable:
    """A WatchTable passed on the command line (its registry row as JSON)."""
    return WatchTable.from_row(orjson.loads(text))


if __name__ == "__main__":
    mysql_url, wt_json, endpoint, secs = sys.argv[1:]
    asyncio.run(raw(mysql_url, watch_table_from_json(wt_json), endpoint, float(secs)))
