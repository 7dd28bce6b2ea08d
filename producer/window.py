"""Window maths: where a subscription's next window ends, or whether it has one at all.

Pure functions of times read from the database server; no host clock is involved. The safe
end itself (the clock bounded by writes still in flight) is common/watermark.py.
"""

from __future__ import annotations

from datetime import datetime

from apievents.common.watermark import UNKNOWN as UNKNOWN  # issue the window, let it report


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
