"""Two of the simpler forms each scenario is compared with, run as their own process (the
third, a Celery peer, is bench/celery_peer.py and reuses these pieces):

seed  the seed's algorithm as one sequential loop: for each due subscription, read the server
      clock, send its window in batches of 1000, then move DateTimeStart; subscriptions one
      after another.
raw   the raw limit: keyset SELECT, orjson and POST over one kept-alive connection, with no
      watermark, no broker and no claims.

    python -m bench.baselines seed|raw DATABASE_URL SECONDS
"""

from __future__ import annotations

import sys
import time
from typing import Any

import httpx
import orjson
import psycopg

FIELDS = (
    "aptnum",
    "patnum",
    "aptstatus",
    "pattern",
    "confirmed",
    "op",
    "provnum",
    "note",
    "aptdatetime",
    "datetstamp",
)
NAMES = (
    "AptNum",
    "PatNum",
    "AptStatus",
    "Pattern",
    "Confirmed",
    "Op",
    "ProvNum",
    "Note",
    "AptDateTime",
    "DateTStamp",
)
PAGE = (
    f"SELECT {', '.join(FIELDS)} FROM appointment "
    "WHERE (datetstamp, aptnum) > (%s, %s) AND datetstamp <= %s "
    "ORDER BY datetstamp, aptnum LIMIT 1000"
)


def send_window(
    conn: psycopg.Connection[Any], client: httpx.Client, url: str, start: Any, end: Any
) -> bool:
    """POST the rows in (start, end] in keyset pages of 1000; False at the first non-200."""
    after: tuple[Any, Any] = (start, 2**62)  # past every key at `start`: ts > start
    while True:
        rows = conn.execute(PAGE, (*after, end)).fetchall()
        if not rows:
            return True
        body = orjson.dumps([dict(zip(NAMES, r, strict=True)) for r in rows])
        if (
            client.post(url, content=body, headers={"Content-Type": "application/json"}).status_code
            != 200
        ):
            return False
        if len(rows) < 1000:
            return True
        after = (rows[-1][-1], rows[-1][0])


def server_clock(conn: psycopg.Connection[Any]) -> Any:
    """The database server's clock: the end of the window about to be sent."""
    (end,) = conn.execute("SELECT now()").fetchone()  # type: ignore[misc]
    return end


def move_window(conn: psycopg.Connection[Any], num: int, ok: bool, end: Any) -> None:
    """Move DateTimeStart to ``end`` if the window went out, and poll again one period on."""
    # statement_timestamp(), not now(): inside a transaction (the Celery peer's) now() would
    # be the transaction's start, before the window was sent.
    conn.execute(
        "UPDATE apievents.subscription SET date_time_start = "
        "CASE WHEN %s THEN %s ELSE date_time_start END, "
        "next_attempt_at = statement_timestamp() + polling_seconds * interval '1 second' "
        "WHERE subscription_num = %s",
        (ok, end, num),
    )


def seed(url: str, seconds: float) -> None:
    """One loop over the due subscriptions, each window sent in full before the next."""
    with psycopg.connect(url, autocommit=True) as conn, httpx.Client() as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            due = conn.execute(
                "SELECT subscription_num, endpoint_url, date_time_start, polling_seconds "
                "FROM apievents.subscription WHERE status = 'active' AND next_attempt_at <= now() "
                "ORDER BY next_attempt_at"
            ).fetchall()
            for num, endpoint, start, _polling in due:
                end = server_clock(conn)
                move_window(conn, num, send_window(conn, client, endpoint, start, end), end)
            time.sleep(0.05 if not due else 0)


def raw(url: str, seconds: float) -> None:
    """The same reads and POSTs as seed, minus every piece of bookkeeping."""
    with psycopg.connect(url, autocommit=True) as conn, httpx.Client() as client:
        subs = conn.execute(
            "SELECT endpoint_url, date_time_start, polling_seconds "
            "FROM apievents.subscription WHERE status = 'active'"
        ).fetchall()
        position = {endpoint: start for endpoint, start, _ in subs}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for endpoint, _, _ in subs:
                end = server_clock(conn)
                send_window(conn, client, endpoint, position[endpoint], end)
                position[endpoint] = end


if __name__ == "__main__":
    mode, database_url, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    {"seed": seed, "raw": raw}[mode](database_url, seconds)
