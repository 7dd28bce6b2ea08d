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
from operator import itemgetter
from typing import Any

from apievents.common import opendental
from apievents.common.registry import WatchTable

Render = Callable[[Any], Any]


# Per type, how Open Dental writes a value; JSON numbers and strings stay as they are. Each
# passes NULL through, so a column's renderer can be chosen once per page (``objects``).
def _datetime(v: datetime | None) -> str | None:
    return None if v is None else opendental.datetime_text(v)


def _date(v: date | None) -> str | None:
    return None if v is None else v.isoformat()


def _time(v: time | None) -> str | None:
    return None if v is None else v.isoformat("seconds")


def _decimal(v: Decimal | None) -> float | None:
    return None if v is None else float(v)  # Open Dental's money columns are doubles


_BY_TYPE: dict[type, Render] = {
    bool: {True: "true", False: "false", None: None}.__getitem__,
    datetime: _datetime,
    date: _date,
    time: _time,
    Decimal: _decimal,
}


def value(v: Any) -> Any:
    """One value as Open Dental renders it, whatever its type."""
    render = _BY_TYPE.get(type(v))
    return v if render is None else render(v)


def _enum(names: dict[int, str]) -> Render:
    # A value outside the map is sent as its number in text, as .NET names an undefined enum.
    return lambda v: v if v is None else names.get(v, str(v))


@lru_cache(maxsize=256)
def layout(wt: WatchTable) -> tuple[tuple[str, int, Render | None], ...]:
    """(JSON name, index in a page row, enum renderer or None) in output order.

    A page row holds the fields, then the derived fields (common/queries.py row_source); each
    derived field goes right after the field it follows, or at the end if that is not sent.
    """
    enums = {column: _enum(dict(m)) for column, m in wt.enums}
    slots: list[tuple[str, int, Render | None]] = [
        (name, i, enums.get(column)) for i, (column, name) in enumerate(wt.fields)
    ]
    for i, d in enumerate(wt.derived, start=len(wt.fields)):
        at = next((k + 1 for k, s in enumerate(slots) if s[0] == d.after), len(slots))
        slots.insert(at, (d.field, i, None))
    return tuple(slots)


def _column_renderer(sample: Any) -> Render:
    """The renderer of a column whose first value is ``sample``: by its type, or by each
    value's type when the first is NULL."""
    return value if sample is None else _BY_TYPE[type(sample)]


def objects(wt: WatchTable, rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Page rows as Open Dental's row objects (paging columns dropped)."""
    if not rows:
        return []
    slots = layout(wt)
    names = [name for name, _, _ in slots]
    indexes = [i for _, i, _ in slots]
    pick = itemgetter(*indexes) if len(indexes) > 1 else lambda row: (row[indexes[0]],)
    # A column's type is the same in every row, so the first row tells which columns need
    # rendering (a NULL there could hide one: those are rendered too); the rest are copied.
    first = rows[0]
    rendered = [
        (name, i, render or _column_renderer(first[i]))
        for name, i, render in slots
        if render is not None or first[i] is None or type(first[i]) in _BY_TYPE
    ]
    out = []
    for row in rows:
        obj = dict(zip(names, pick(row), strict=True))
        for name, i, render in rendered:
            obj[name] = render(row[i])
        out.append(obj)
    return out
