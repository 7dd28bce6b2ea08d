from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import orjson
import pytest
from psycopg import sql

from apievents.common import queries
from apievents.common.registry import WatchTable
from apievents.worker.rows import RowEncodingError, encode, position

WT = WatchTable(
    "Appointment",
    "public",
    "appointment",
    "aptnum",
    "datetstamp",
    (
        ("aptnum", "AptNum"),
        ("note", "Note"),
        ("aptdatetime", "AptDateTime"),
        ("datetstamp", "DateTStamp"),
    ),
)
TS = datetime(2026, 1, 1, 9, 30, tzinfo=UTC)


def test_rows_become_objects_with_json_names_and_iso_times() -> None:
    row = (5, "x", datetime(2026, 2, 1, 8, 0), TS, TS, 5)  # + paging columns
    assert orjson.loads(encode(WT, [row])) == [
        {
            "AptNum": 5,
            "Note": "x",
            "AptDateTime": "2026-02-01T08:00:00",
            "DateTStamp": "2026-01-01T09:30:00+00:00",
        }
    ]
    assert position(row) == (TS, 5)


def test_decimal_and_date_are_encoded() -> None:
    wt = WatchTable("T", "public", "t", "k", "ts", (("k", "K"), ("fee", "Fee"), ("d", "D")))
    assert orjson.loads(encode(wt, [(1, Decimal("12.50"), date(2026, 1, 1))])) == [
        {"K": 1, "Fee": "12.50", "D": "2026-01-01"}
    ]


def test_values_without_json_form_are_an_encoding_error() -> None:
    wt = WatchTable("T", "public", "t", "k", "ts", (("k", "K"), ("blob", "Blob")))
    with pytest.raises(RowEncodingError):
        encode(wt, [(1, b"\x00\x01")])


def test_page_sql_quotes_registry_identifiers_and_uses_keyset() -> None:
    evil = WatchTable("Evil", "public", 'x"; DROP TABLE patient; --', "k", "ts", (("k", "K"),))
    text = queries.window_page(evil, first=False).as_string(None)
    assert '"x""; DROP TABLE patient; --"' in text
    assert '("ts", "k") > (%(after_ts)s, %(after_key)s)' in text
    assert "OFFSET" not in text.upper()
    first = queries.window_page(WT, first=True).as_string(None)
    assert '"datetstamp" > %(start)s AND "datetstamp" <= %(end)s' in first
    assert 'ORDER BY "datetstamp", "aptnum" LIMIT %(limit)s' in first
    assert isinstance(queries.newest_change(WT), sql.Composed)
