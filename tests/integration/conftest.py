"""Integration fixtures: the pipeline as threads, against real PostgreSQL and RabbitMQ."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from apievents.common import subscriptions
from tests.support.services import LOOPBACK_POLICY, Pipeline, connect, fast_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with connect(database_url) as c:
        yield c


@pytest.fixture
def pipeline(database_url: str, prefix: str) -> Iterator[Pipeline]:
    p = Pipeline(fast_settings(database_url, prefix))
    yield p
    p.stop_all()


def subscribe(
    conn: psycopg.Connection[Any],
    url: str,
    watch_table: str = "Appointment",
    source: str | None = None,
    **extra: Any,
) -> int:
    values = {"endpoint_url": url, "watch_table": watch_table, "polling_seconds": 1} | extra
    created = subscriptions.create(conn, values, LOOPBACK_POLICY, source=source)
    return int(created["SubscriptionNum"])


def insert_appointments(
    conn: psycopg.Connection[Any], n: int, *, one_transaction: bool = True, note: str = ""
) -> list[int]:
    """Insert n appointments; in one transaction they all share one DateTStamp."""
    sql = "INSERT INTO appointment (patnum, aptstatus, note) VALUES (%s, 1, %s) RETURNING aptnum"
    if one_transaction:
        with conn.transaction():
            cur = conn.execute(
                "INSERT INTO appointment (patnum, aptstatus, note) "
                "SELECT g, 1, %s FROM generate_series(1, %s) g RETURNING aptnum",
                (note, n),
            )
            return [r[0] for r in cur.fetchall()]
    keys = []
    for i in range(n):  # autocommit: each row its own transaction and DateTStamp
        keys.append(conn.execute(sql, (i, note)).fetchone()[0])  # type: ignore[index]
    return keys


def date_time_start(conn: psycopg.Connection[Any], num: int) -> Any:
    return conn.execute(
        "SELECT date_time_start FROM apievents.subscription WHERE subscription_num = %s", (num,)
    ).fetchone()[0]  # type: ignore[index]


def state(conn: psycopg.Connection[Any], num: int) -> dict[str, Any]:
    return subscriptions.get(conn, num)


def cursor(conn: psycopg.Connection[Any], num: int) -> str | None:
    """The key of the subscription's checkpoint inside its DateTimeStart, if any."""
    row = conn.execute(
        "SELECT cursor_key FROM apievents.subscription WHERE subscription_num = %s", (num,)
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def caught_up(conn: psycopg.Connection[Any], num: int, keys: list[int]) -> bool:
    """The subscription's watermark covers these rows and no window is in flight."""
    row = conn.execute(
        "SELECT s.date_time_start >= (SELECT max(datetstamp) FROM appointment "
        "WHERE aptnum = ANY(%s)) AND s.cursor_key IS NULL "
        "FROM apievents.subscription s WHERE subscription_num = %s",
        (keys, num),
    ).fetchone()
    return bool(row and row[0]) and not state(conn, num)["InFlight"]
