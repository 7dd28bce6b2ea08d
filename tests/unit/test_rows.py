from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import orjson
import pytest
from psycopg import sql

from apievents.common import queries_pg
from apievents.common.registry import Derived, WatchTable
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
    text = queries_pg.window_page(evil, first=False).as_string(None)
    assert '"x""; DROP TABLE patient; --"' in text
    assert '("ts", "k") > (%(after_ts)s, %(after_key)s)' in text
    assert "OFFSET" not in text.upper()
    first = queries_pg.window_page(WT, first=True).as_string(None)
    assert '"datetstamp" > %(start)s AND "datetstamp" <= %(end)s' in first
    assert 'ORDER BY "datetstamp", "aptnum" LIMIT %(limit)s' in first
    assert isinstance(queries_pg.newest_change(WT), sql.Composed)


OD = WatchTable(
    "Appointment",
    "public",
    "appointment",
    "aptnum",
    "datetstamp",
    (
        ("aptnum", "AptNum"),
        ("aptstatus", "AptStatus"),
        ("confirmed", "Confirmed"),
        ("timelocked", "TimeLocked"),
        ("aptdatetime", "AptDateTime"),
        ("datetstamp", "DateTStamp"),
        ("birthdate", "Birthdate"),
        ("fee", "Fee"),
    ),
    "opendental",
    (("aptstatus", ((0, "None"), (1, "Scheduled"))),),
    (
        Derived("colorOverride", "coloroverride", "AptDateTime"),
        Derived("confirmed", "confirmed", "Confirmed", ("public", "definition", "defnum", "x")),
    ),
)


def test_opendental_format_renders_like_open_dental() -> None:
    chicago = datetime(2026, 7, 31, 8, 30, 12, 123456, tzinfo=ZoneInfo("America/Chicago"))
    row = (18, 1, 19, False, datetime(1, 1, 1), chicago, date(1986, 11, 6), Decimal("1.5"))
    row += ("0,0,0", "Not Called", chicago, 18)  # derived, then the paging columns
    (obj,) = orjson.loads(encode(OD, [row]))
    assert obj == {
        "AptNum": 18,
        "AptStatus": "Scheduled",
        "Confirmed": 19,
        "confirmed": "Not Called",
        "TimeLocked": "false",
        "AptDateTime": "0001-01-01 00:00:00",
        "colorOverride": "0,0,0",
        "DateTStamp": "2026-07-31 08:30:12",  # the session's zone, whole seconds
        "Birthdate": "1986-11-06",
        "Fee": 1.5,
    }
    assert list(obj)[:6] == [
        "AptNum",
        "AptStatus",
        "Confirmed",
        "confirmed",
        "TimeLocked",
        "AptDateTime",
    ]
    unknown = (18, 7, 19, True, None, chicago, date(1, 1, 1), 0, "", "", chicago, 18)
    (obj,) = orjson.loads(encode(OD, [unknown]))
    assert (obj["AptStatus"], obj["TimeLocked"], obj["AptDateTime"]) == ("7", "true", None)


def test_row_source_adds_derived_fields_and_the_row_filter() -> None:
    deleted = WatchTable(
        "AppointmentDeleted",
        "public",
        "histappointment",
        "histapptnum",
        "datetstamp",
        (("aptnum", "AptNum"),),
        "opendental",
        row_filter=(("histapptaction", 4),),
    )
    page = queries_pg.window_page(deleted, first=True).as_string(None)
    assert 'WHERE "histapptaction" = 4 AND "datetstamp" > %(start)s' in page
    assert queries_pg.newest_change(deleted).as_string(None).endswith('WHERE "histapptaction" = 4')
    select = queries_pg.row_source(OD).select.as_string(None)
    assert select.endswith('"datetstamp", "aptnum"')  # the paging columns come last
    assert (
        'coalesce((SELECT "public"."definition"."x"::text FROM "public"."definition" '
        'WHERE "public"."definition"."defnum" = "public"."appointment"."confirmed" LIMIT 1), \'\')'
    ) in select
    assert '("public"."appointment"."coloroverride" >> 16) & 255' in select
    assert queries_pg.row_source(WT).where.as_string(None) == "TRUE"


def test_a_null_in_the_first_row_does_not_hide_a_column_that_needs_rendering() -> None:
    wt = WatchTable("T", "public", "t", "k", "ts", (("d", "D"),), "opendental")
    rows = [(None, TS, 1), (datetime(2026, 1, 2, 3, 4, 5), TS, 2)]
    assert orjson.loads(encode(wt, rows)) == [{"D": None}, {"D": "2026-01-02 03:04:05"}]
