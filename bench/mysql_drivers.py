"""Measure MySQL/MariaDB drivers on the worker's read: 100,000 rows by keyset pages of 1,000.

Run with a Python that has the drivers installed (the choice and its numbers are in the
README's dependency section):

    python -m bench.mysql_drivers [mysql://root@127.0.0.1:3306]

It creates the database ``apievents_driver_bench``, fills it, reads it with each driver that
imports, prints rows/s (best of three), and drops the database.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

ROWS = 100_000
PAGE = 1_000
DB = "apievents_driver_bench"
FIRST = "SELECT k, a, b, c, note, ts FROM t WHERE ts > %s ORDER BY ts, k LIMIT %s"
NEXT = (
    "SELECT k, a, b, c, note, ts FROM t WHERE ts > %s OR (ts = %s AND k > %s) "
    "ORDER BY ts, k LIMIT %s"
)
START = "1970-01-02 00:00:00"


def _sync_read(cursor: Any) -> int:
    cursor.execute(FIRST, (START, PAGE))
    rows = cursor.fetchall()
    total = 0
    while rows:
        total += len(rows)
        last = rows[-1]
        cursor.execute(NEXT, (last[5], last[5], last[0], PAGE))
        rows = cursor.fetchall()
    return total


async def _async_read(cursor: Any) -> int:
    await cursor.execute(FIRST, (START, PAGE))
    rows = await cursor.fetchall()
    total = 0
    while rows:
        total += len(rows)
        last = rows[-1]
        await cursor.execute(NEXT, (last[5], last[5], last[0], PAGE))
        rows = await cursor.fetchall()
    return total


def _sync(module: str, **kw: Any) -> Callable[[dict[str, Any]], int]:
    def run(c: dict[str, Any]) -> int:
        mod = importlib.import_module(module)
        args = dict(c) | kw
        if module == "MySQLdb":
            args["passwd"] = args.pop("password")
            args["db"] = args.pop("database")
        conn = mod.connect(**args)
        try:
            return _sync_read(conn.cursor())
        finally:
            conn.close()

    return run


def _asyncmy(c: dict[str, Any]) -> int:
    async def go() -> int:
        import asyncmy  # type: ignore[import-not-found,unused-ignore]

        conn = await asyncmy.connect(**c)
        try:
            async with conn.cursor() as cur:
                return await _async_read(cur)
        finally:
            conn.close()

    return asyncio.run(go())


def _aiomysql(c: dict[str, Any]) -> int:
    async def go() -> int:
        import aiomysql  # type: ignore[import-not-found,unused-ignore]

        args = {k: v for k, v in c.items() if k != "database"}
        conn = await aiomysql.connect(**args, db=c["database"])
        try:
            async with conn.cursor() as cur:
                return int(await _async_read(cur))
        finally:
            conn.close()

    return asyncio.run(go())


DRIVERS: dict[str, Callable[[dict[str, Any]], int]] = {
    "PyMySQL": _sync("pymysql"),
    "mysqlclient": _sync("MySQLdb"),
    "MariaDB Connector/Python": _sync("mariadb"),
    "asyncmy": _asyncmy,
    "aiomysql": _aiomysql,
}


def _fill(c: dict[str, Any]) -> None:
    import pymysql

    conn = pymysql.connect(**(c | {"database": None}), autocommit=True)
    cur = conn.cursor()
    cur.execute(f"DROP DATABASE IF EXISTS {DB}")
    cur.execute(f"CREATE DATABASE {DB}")
    cur.execute(
        f"CREATE TABLE {DB}.t (k bigint PRIMARY KEY AUTO_INCREMENT, a bigint NOT NULL, "
        "b int NOT NULL, c tinyint NOT NULL, note varchar(255) NOT NULL, "
        "ts timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP, KEY ts (ts, k))"
    )
    batch = 5_000
    for first in range(0, ROWS, batch):
        values = [
            (i * 7, i % 1000, i % 5, f"note {i} " * 4, f"2026-01-01 00:{(i // 1000) % 60:02}:00")
            for i in range(first, first + batch)
        ]
        cur.executemany(f"INSERT INTO {DB}.t (a, b, c, note, ts) VALUES (%s,%s,%s,%s,%s)", values)
    conn.close()


def _drop(c: dict[str, Any]) -> None:
    import pymysql

    conn = pymysql.connect(**(c | {"database": None}), autocommit=True)
    conn.cursor().execute(f"DROP DATABASE IF EXISTS {DB}")
    conn.close()


def main() -> None:
    """Fill, measure each importable driver, drop."""
    url = urlsplit(sys.argv[1] if len(sys.argv) > 1 else "mysql://root@127.0.0.1:3306")
    c = {
        "host": url.hostname or "127.0.0.1",
        "port": url.port or 3306,
        "user": url.username or "root",
        "password": url.password or "",
        "database": DB,
    }
    _fill(c)
    try:
        for name, run in DRIVERS.items():
            try:
                best = 0.0
                for _ in range(3):
                    t0 = time.perf_counter()
                    n = run(c)
                    best = max(best, n / (time.perf_counter() - t0))
                assert n == ROWS, (name, n)
                print(f"{name:26} {best:>10,.0f} rows/s")
            except ImportError as e:
                print(f"{name:26} not installed ({e})")
    finally:
        _drop(c)


if __name__ == "__main__":
    main()
