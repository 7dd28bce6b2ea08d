"""Window maths: where a subscription's next window ends, or whether it has one at all.

Pure functions of times read from the database server; no host clock is involved.
"""

from __future__ import annotations

from datetime import datetime, timedelta

UNKNOWN = object()  # the newest change could not be read: issue the window, let it report
_TICK = timedelta(microseconds=1)  # timestamptz resolution


def safe_end(clock: datetime, oldest_open: datetime | None, margin: timedelta) -> datetime:
    """The latest window end that no open or future transaction can still write at or below.

    ``oldest_open`` is the start of the oldest transaction still open: it may yet commit rows
    stamped with its start time, so the end stays strictly below it. ``margin`` covers the
    moment between a transaction taking its timestamp and showing up in pg_stat_activity.
    """
    end = clock - margin
    if oldest_open is not None:
        end = min(end, oldest_open - _TICK)
    return end


def plan(
    end: datetime,
    start: datetime,
    cursor_key: str | None,
    stop: datetime | None,
    newest: datetime | object | None,
) -> datetime | None:
    """The window end for a subscription at (start, cursor_key), or None if it has no work.

    A window covers (start, cursor_key) < (DateTStamp, key) and DateTStamp <= end. With no
    cursor, rows at exactly ``start`` were already delivered.
    """
    if stop is not None:
        end = min(end, stop)
    if end < start or (end == start and cursor_key is None):
        return None
    if newest is UNKNOWN:
        return end
    if newest is None or not isinstance(newest, datetime):
        return None
    if newest < start or (newest == start and cursor_key is None):
        return None
    return end
