"""Open Dental's rendering of a row: the ``opendental`` payload format.

Open Dental's webhooks (and its REST API) send times as ``yyyy-MM-dd HH:mm:ss``, dates as
``yyyy-MM-dd``, booleans as the strings "true" and "false", and enum columns by name; numbers
and text stay JSON numbers and strings. Times are shown in the database session's time zone
(APIEVENTS_TIMEZONE, else the database's TimeZone): psycopg hands timestamptz values out in it.
Derived fields arrive from the query already computed (common/queries.py row_source); here
they only take their place after the field they follow, as in Open Dental's examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from functools import lru_cache
from typing import Any

from apievents.common import opendental
from apievents.common.registry import WatchTable

Render = Callable[[Any], Any]


def _time(v: time) -> str:
    return f"{v.hour:02d}:{v.minute:02d}:{v.second:02d}"


_BY_TYPE: dict[type, Render] = {
    bool: lambda v: "true" if v else "false",
    datetime: opendental.datetime_text,
    date: opendental.date_text,
    time: _time,
    Decimal: float,  # Open Dental's money columns are doubles: JSON numbers
}


def value(v: Any) -> Any:
    """One value as Open Dental renders it; JSON-native values stay as they are."""
    render = _BY_TYPE.get(type(v))
    return v if render is None else render(v)


def _enum(names: dict[int, str]) -> Render:
    # A value outside the map is sent as its number in text, as .NET names an undefined enum.
    return lambda v: v if v is None else names.get(v, str(v))


@lru_cache(maxsize=256)
def layout(wt: WatchTable) -> tuple[tuple[str, int, Render], ...]:
    """(JSON name, index in a page row, renderer) in output order.

    A page row holds the fields, then the derived fields (common/queries.py row_source); each
    derived field goes right after the field it follows, or at the end if that is not sent.
    """
    enums = {column: _enum(dict(m)) for column, m in wt.enums}
    slots: list[tuple[str, int, Render]] = [
        (name, i, enums.get(column, value)) for i, (column, name) in enumerate(wt.fields)
    ]
    for i, d in enumerate(wt.derived, start=len(wt.fields)):
        at = next((k + 1 for k, s in enumerate(slots) if s[0] == d.after), len(slots))
        slots.insert(at, (d.field, i, value))
    return tuple(slots)


def objects(wt: WatchTable, rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Page rows as Open Dental's row objects (paging columns dropped)."""
    slots = layout(wt)
    return [{name: render(row[i]) for name, i, render in slots} for row in rows]
