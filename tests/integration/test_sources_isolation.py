"""Many sources: one that is down or hangs costs the others nothing, and heals by itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from prometheus_client import REGISTRY

from tests.integration.conftest import subscribe
from tests.support import wait_for
from tests.support.mariadb import Office, add_office, mariadb_database
from tests.support.receiver import Receiver
from tests.support.services import Pipeline, fast_settings
from tests.support.tcp_proxy import Proxy


@pytest.fixture
def offices(conn: psycopg.Connection[Any]) -> Iterator[tuple[Office, Office, Proxy]]:
    with mariadb_database() as flaky_url, mariadb_database() as steady_url:
        u = urlsplit(flaky_url)
        proxy = Proxy((u.hostname or "127.0.0.1", u.port or 3306))
        try:
            add_office(conn, "flaky", proxy.url(flaky_url))  # the services go through it
            yield Office("flaky", flaky_url), add_office(conn, "steady", steady_url), proxy
        finally:
            proxy.close()


def up(source: str) -> float | None:
    return REGISTRY.get_sample_value("apievents_source_up", {"source": source})


def keys(receiver: Receiver, path: str) -> list[int]:
    return [r["AptNum"] for r in receiver.delivered(path)]


@pytest.mark.parametrize("outage", ["down", "hang"])
def test_a_source_that_is_down_or_hangs_costs_the_others_nothing_and_heals(
    outage: str,
    database_url: str,
    prefix: str,
    conn: psycopg.Connection[Any],
    offices: tuple[Office, Office, Proxy],
    receiver: Receiver,
) -> None:
    flaky, steady, proxy = offices
    subscribe(conn, receiver.url("/flaky"), "Appointment", source="flaky")
    subscribe(conn, receiver.url("/steady"), "Appointment", source="steady")
    settings = replace(fast_settings(database_url, prefix), source_timeout_seconds=1.0)
    pipeline = Pipeline(settings).start_all()
    try:
        first = flaky.insert_appointments(2)
        wait_for(lambda: keys(receiver, "/flaky") == first, 30, "the flaky source's rows")
        getattr(proxy, outage)()
        wait_for(lambda: up("flaky") == 0, 30, "the flaky source reported down")
        during = flaky.insert_appointments(3)
        steady_keys: list[int] = []
        for _ in range(5):  # the steady source keeps flowing, change after change
            steady_keys += steady.insert_appointments(1)
            wait_for(
                lambda n=list(steady_keys): keys(receiver, "/steady") == n,  # type: ignore[misc]
                15,
                "the steady rows",
            )
        assert keys(receiver, "/flaky") == first
        proxy.up()
        wait_for(lambda: keys(receiver, "/flaky") == first + during, 60, "the healed source")
        assert up("flaky") == 1 and up("steady") == 1
    finally:
        pipeline.stop_all()


def test_a_source_that_asks_for_tls_is_never_read_in_plain_text() -> None:
    # This server has TLS off: with tls=verify the source is refused, never read unencrypted.
    from apievents.common import mysql
    from apievents.common.sources import MySQLAddress

    async def read(url: str) -> list[Any]:
        pool = mysql.Pool("tls", MySQLAddress.parse(url), 1, 5.0)
        try:
            return await pool.fetch("SELECT 1")
        finally:
            pool.close()

    with mariadb_database() as url:
        assert asyncio.run(read(url)) == [(1,)]  # the server is there, in plain text
        with pytest.raises(mysql.SourceUnavailable):
            asyncio.run(read(url + "?tls=verify"))


def test_a_source_whose_connections_are_all_busy_fails_fast() -> None:
    # A hanging source must fail its windows within its timeout, not hold the worker's slots
    # while they queue for one of its connections.
    from apievents.common import mysql
    from apievents.common.sources import MySQLAddress

    async def second_read_while_the_first_hangs(url: str) -> None:
        pool = mysql.Pool("busy", MySQLAddress.parse(url), 1, 1.0)
        held = asyncio.Event()

        async def hold() -> None:
            async with pool.connection():
                held.set()
                await asyncio.sleep(4)

        holder = asyncio.create_task(hold())
        await held.wait()
        try:
            with pytest.raises(mysql.SourceUnavailable, match="busy"):
                await pool.fetch("SELECT 1")
        finally:
            holder.cancel()
            await asyncio.gather(holder, return_exceptions=True)
            pool.close()

    with mariadb_database() as url:
        asyncio.run(second_read_while_the_first_hangs(url))


def test_one_unreadable_table_leaves_the_sources_other_tables_flowing(
    conn: psycopg.Connection[Any],
) -> None:
    # A column renamed in one table is that table's error (its windows report it), never "the
    # source is down", which would stop every table of the office.
    from apievents.common import mysql, registry
    from apievents.common.mysql_horizon import read
    from apievents.common.sources import MySQLAddress
    from apievents.producer import window
    from tests.support.mariadb import my_connect

    with mariadb_database() as url:
        office = add_office(conn, "office", url)
        office.insert_appointments(1)
        with my_connect(url) as c:
            c.cursor().execute("ALTER TABLE patient RENAME COLUMN DateTStamp TO Stamp")
        tables = [wt for wt in registry.all_tables(conn) if wt.source == "office"]

        async def reading() -> Any:
            pool = mysql.Pool("office", MySQLAddress.parse(url), 1, 5.0)
            try:
                return await read(pool, tables)
            finally:
                pool.close()

        newest = asyncio.run(reading()).newest
    assert newest["office.Patient"] is window.UNKNOWN
    assert newest["office.Appointment"] is not None
    assert newest["office.Appointment"] is not window.UNKNOWN


def test_many_sources_on_one_server_all_get_their_readings() -> None:
    # INNODB_TRX refreshes only after 0.1 s without readers: eight sources on one server, each
    # reading it every 0.25 s, kept each other's copies stale and got (almost) no readings.
    from apievents.common import mysql
    from apievents.common.mysql_horizon import read
    from apievents.common.sources import MySQLAddress

    async def readings(urls: list[str]) -> list[int]:
        pools = [mysql.Pool(f"s{i}", MySQLAddress.parse(u), 1, 10.0) for i, u in enumerate(urls)]

        async def watch(pool: mysql.Pool) -> int:
            done = 0
            for _ in range(6):
                await read(pool, [], share=True)  # StaleTransactions would end the test
                done += 1
                await asyncio.sleep(0.25)
            return done

        try:
            return await asyncio.gather(*(watch(p) for p in pools))
        finally:
            for p in pools:
                p.close()

    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(mariadb_database()) for _ in range(8)]
        assert asyncio.run(readings(urls)) == [6] * 8
