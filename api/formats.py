"""How answers show times: ISO 8601 on the original routes, Open Dental's way under /api/v1.

Open Dental answers ``yyyy-MM-dd HH:mm:ss`` in the office's zone (here the session's:
APIEVENTS_TIMEZONE, else the database's), and a DateTimeStop of "0001-01-01 00:00:00" for a
subscription that never stops. Open Dental's fields come first, in its order.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from apievents.common.opendental import datetime_text

Format = Callable[[Any], Any]

NO_STOP = "0001-01-01 00:00:00"
# Open Dental's answer fields, in its order; apievents' own follow.
_OPEN_DENTAL = (
    "SubscriptionNum",
    "EndPointUrl",
    "Workstation",
    "CustomerKey",
    "WatchTable",
    "PollingSeconds",
    "UiEventType",
    "DateTimeStart",
    "DateTimeStop",
    "Note",
)
_TIMES = frozenset(
    {
        "DateTimeStart",
        "DateTimeStop",
        "NextAttempt",
        "LastAttempt",
        "LastSuccess",
        "At",
        "WindowStart",
        "WindowEnd",
    }
)


def iso(obj: Any) -> Any:
    """The original routes' form: as common/subscriptions.py makes it."""
    return obj


def opendental(obj: Any) -> Any:
    """A subscription or attempt (or a list of them) as Open Dental's API shows it."""
    if isinstance(obj, list):
        return [opendental(o) for o in obj]
    out = {k: obj[k] for k in _OPEN_DENTAL if k in obj}
    out |= {k: v for k, v in obj.items() if k not in out}
    for key in _TIMES & out.keys():
        out[key] = _time(out[key])
    if "DateTimeStop" in out and out["DateTimeStop"] is None:
        out["DateTimeStop"] = NO_STOP
    return out


def _time(value: str | None) -> str | None:
    # The ISO text carries the session's offset, so its wall time is the session zone's.
    if value is None:
        return None
    return datetime_text(datetime.fromisoformat(value))
