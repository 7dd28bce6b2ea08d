"""Reading a window's rows in keyset pages and turning a page into JSON bytes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
import psycopg

from apievents.common import queries_pg
from apievents.common.registry import WatchTable
from apievents.worker import payload


class RowEncodingError(ValueError):
    """A row holds a value that has no JSON form (for example bytea)."""


def page_cursor(
    conn: psycopg.Connection[Any],
    wt: WatchTable,
    start: datetime,
    end: datetime,
    after: tuple[Any, Any] | None,
    limit: int,
) -> psycopg.Cursor[Any]:
    """Query the next ``limit`` rows of the window after the (ts, key) position ``after``.

    Returns the cursor, so a caller in pipeline mode can fetch once the pipeline has synced.
    """
    params: dict[str, Any] = {"start": start, "end": end, "limit": limit}
    if after is not None:
        params["after_ts"], params["after_key"] = after
    return conn.execute(queries_pg.window_page(wt, first=after is None), params)


def position(row: Sequence[Any]) -> tuple[Any, Any]:
    """The (timestamp, key) of a row of page_cursor, for the next page's keyset condition."""
    return row[-2], row[-1]


def encode(wt: WatchTable, rows: Sequence[Sequence[Any]]) -> bytes:
    """A JSON array of row objects in the WatchTable's payload format (paging columns dropped).

    ``rows`` have the shape of ``queries_pg.row_source(wt).select``. The ``iso`` format sends
    values as orjson renders them (ISO 8601 times); ``opendental`` as Open Dental does
    (worker/payload.py).
    """
    try:
        if wt.payload_format == "opendental":
            return orjson.dumps(payload.objects(wt, rows), default=_extra)
        names = wt.output_names
        return orjson.dumps([dict(zip(names, row, strict=False)) for row in rows], default=_extra)
    except TypeError as e:
        raise RowEncodingError(str(e)) from None


def _extra(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"no JSON form for a {type(value).__name__} value")
