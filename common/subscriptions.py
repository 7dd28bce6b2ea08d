"""Subscriptions as operators and integrators see them: validation, storage, JSON form."""

from __future__ import annotations

import base64
import ipaddress
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import psycopg

from apievents.common import queries, registry, watermark
from apievents.common.ssrf import EndpointPolicy, EndpointRefused

# Open Dental's field name for each column an operator may set.
FIELDS = {
    "endpoint_url": "EndPointUrl",
    "workstation": "Workstation",
    "customer_key": "CustomerKey",
    "watch_table": "WatchTable",
    "polling_seconds": "PollingSeconds",
    "date_time_start": "DateTimeStart",
    "date_time_stop": "DateTimeStop",
    "note": "Note",
    "secret": "Secret",
    "ui_event_type": "UiEventType",
}
_MAX_TEXT = {"workstation": 255, "customer_key": 255, "note": 4000}
# Open Dental's UI events fire inside its program, on a user's action; there is no such
# program here, so a subscription may carry one (it is stored and answered) but only its
# WatchTable is delivered.
UI_EVENT_TYPES = ("", "PatientSelected")
# Open Dental's "no date": a DateTimeStop of 0001-01-01 means the subscription never stops.
NO_STOP = datetime(1, 1, 1)


class InputError(ValueError):
    """Bad subscription input; ``column`` says which field."""

    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column = column

    @property
    def flag(self) -> str:
        """The CLI flag of the field."""
        return "--" + self.column.replace("_", "-")


class NotFound(LookupError):
    """No subscription with that number."""


def validate(
    conn: psycopg.Connection[Any],
    values: Mapping[str, Any],
    *,
    partial: bool,
    policy: EndpointPolicy,
) -> dict[str, Any]:
    """Check and normalise input; every problem is an InputError naming its field."""
    out: dict[str, Any] = {}
    if values.get("ui_event_type") and not values.get("watch_table") and not partial:
        raise InputError(
            "ui_event_type",
            f"{values['ui_event_type']} is a UI event, which fires inside the Open Dental "
            "program; apievents delivers database events only: name a WatchTable",
        )
    for column, raw in values.items():
        if column not in FIELDS:
            raise InputError(column, "unknown field")
        if raw is None and column not in ("date_time_start", "date_time_stop"):
            raise InputError(column, "must not be empty")
        out[column] = _check(conn, column, raw)
    if "endpoint_url" in out:
        try:
            policy.check(out["endpoint_url"])
        except EndpointRefused as e:
            raise InputError("endpoint_url", f"refused: {e}") from None
    if not partial:
        for column in ("endpoint_url", "watch_table", "polling_seconds"):
            if column not in out:
                raise InputError(column, "is required")
    start, stop = out.get("date_time_start"), out.get("date_time_stop")
    if start is not None and stop is not None and stop <= start:
        raise InputError("date_time_stop", "must be after DateTimeStart")
    return out


def _check(conn: psycopg.Connection[Any], column: str, raw: Any) -> Any:
    if column == "endpoint_url":
        return check_url(str(raw))
    if column == "watch_table":
        try:
            return registry.get(conn, str(raw)).name
        except registry.RegistryError as e:
            raise InputError(column, str(e)) from None
    if column == "polling_seconds":
        return _positive_int(column, raw)
    if column in ("date_time_start", "date_time_stop"):
        when = None if raw is None else parse_time(column, raw)
        if column == "date_time_stop" and when is not None and when.replace(tzinfo=None) == NO_STOP:
            return None
        return None if when is None else _in_db_zone(conn, when)
    if column == "ui_event_type":
        if raw not in UI_EVENT_TYPES:
            raise InputError(column, "must be PatientSelected or empty")
        return raw
    if column == "secret":
        return check_secret(raw)
    if not isinstance(raw, str) or len(raw) > _MAX_TEXT[column]:
        raise InputError(column, f"must be text of at most {_MAX_TEXT[column]} characters")
    if any(ord(c) < 32 for c in raw) and column != "note":
        raise InputError(column, "must not contain control characters")  # header injection
    return raw


def check_secret(raw: Any) -> str:
    """A Standard Webhooks secret: ``whsec_`` and base64 of 24 to 64 random bytes."""
    text = raw if isinstance(raw, str) else ""
    try:
        key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        key = b""
    if not text.startswith("whsec_") or not 24 <= len(key) <= 64:
        raise InputError("secret", "must be whsec_ followed by base64 of 24 to 64 bytes")
    return text


def new_secret() -> str:
    """A fresh signing secret."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def check_url(url: str) -> str:
    """An absolute http(s) URL with a host; raises InputError otherwise."""
    if len(url) > 2048 or any(c.isspace() for c in url):
        raise InputError("endpoint_url", "must be a URL without spaces, at most 2048 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise InputError("endpoint_url", f"is not a valid URL ({e})") from None
    if parts.scheme not in ("http", "https"):
        raise InputError("endpoint_url", "must start with http:// or https://")
    host = parts.hostname or ""
    if not host:
        raise InputError("endpoint_url", "has no host")
    if port == 0:
        raise InputError("endpoint_url", "port must be 1 to 65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not all(label and len(label) < 64 for label in host.rstrip(".").split(".")):
            raise InputError("endpoint_url", f"host {host!r} is not a valid name") from None
    return url


def _positive_int(column: str, raw: Any) -> int:
    try:
        value = int(raw) if not isinstance(raw, bool) else None
    except (TypeError, ValueError):
        value = None
    if value is None or str(value) != str(raw).strip() or value <= 0 or value > 86400 * 7:
        raise InputError(column, "must be a whole number of seconds from 1 to 604800")
    return value


def parse_time(column: str, raw: Any) -> datetime:
    """ISO 8601; a time without an offset is read in the database server's time zone."""
    if isinstance(raw, datetime):
        return raw
    try:
        return datetime.fromisoformat(str(raw).strip())
    except ValueError:
        raise InputError(column, f"is not an ISO 8601 time: {raw!r}") from None


def _in_db_zone(conn: psycopg.Connection[Any], t: datetime) -> datetime:
    if t.tzinfo is not None:
        return t
    row = conn.execute(queries.AS_TIMESTAMPTZ, (t,)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def create(
    conn: psycopg.Connection[Any],
    values: Mapping[str, Any],
    policy: EndpointPolicy,
    margin: float = 0.05,
) -> dict[str, Any]:
    """Validate and insert; returns the JSON form, with the signing secret shown this once.

    The default DateTimeStart is the safe window end (``margin`` is the producer's
    --watermark-margin-seconds), not now(): a transaction open at creation may still commit
    rows stamped before now(), and they belong to the new subscription.
    """
    clean = validate(conn, values, partial=False, policy=policy)
    clean.setdefault("secret", new_secret())
    defaults: dict[str, Any] = {
        "workstation": "",
        "customer_key": "",
        "note": "",
        "ui_event_type": "",
    }
    params = dict.fromkeys(FIELDS) | defaults | clean
    with conn.transaction():
        if params["date_time_start"] is None:
            start = watermark.read(conn, timedelta(seconds=margin)).end
            stop = params["date_time_stop"]
            if stop is not None and stop <= start:
                raise InputError("date_time_stop", "must be after DateTimeStart")
            watermark.advance(conn, start)
            params["date_time_start"] = start
        row = conn.execute(queries.SUBSCRIPTION_INSERT, params).fetchone()
    return to_json(row) | {"Secret": clean["secret"]}


def get(conn: psycopg.Connection[Any], num: int) -> dict[str, Any]:
    """One subscription's JSON form; NotFound if there is none."""
    return to_json(conn.execute(queries.SUBSCRIPTION_GET, (num,)).fetchone(), num)


def list_all(
    conn: psycopg.Connection[Any], customer_key: str | None = None
) -> list[dict[str, Any]]:
    """Every subscription (of one customer, if given), by number."""
    if customer_key is None:
        cur = conn.execute(queries.SUBSCRIPTION_LIST)
    else:
        cur = conn.execute(queries.SUBSCRIPTION_LIST_FOR, (customer_key,))
    return [to_json(r) for r in cur.fetchall()]


def update(
    conn: psycopg.Connection[Any],
    num: int,
    values: Mapping[str, Any],
    policy: EndpointPolicy,
    secret_overlap: float = 86400.0,
) -> dict[str, Any]:
    """Change only the named fields; drops any claim so the change takes effect at once.

    A new secret replaces the old one, which keeps signing for ``secret_overlap`` seconds.
    """
    clean = validate(conn, values, partial=True, policy=policy)
    if not clean:
        return get(conn, num)
    with conn.transaction():
        current = conn.execute(queries.SUBSCRIPTION_LOCK, (num,)).fetchone()
        if current is None:
            raise NotFound(num)
        start = clean.get("date_time_start", current[0])
        stop = clean.get("date_time_stop", current[1])
        if start is not None and stop is not None and stop <= start:
            raise InputError("date_time_stop", "must be after DateTimeStart")
        row = conn.execute(
            queries.subscription_update(list(clean)),
            clean | {"num": num, "overlap": secret_overlap},
        ).fetchone()
    return to_json(row, num)


def set_status(
    conn: psycopg.Connection[Any], num: int, status: str, reason: str | None = None
) -> dict[str, Any]:
    """Pause, resume (active) or disable."""
    row = conn.execute(
        queries.SUBSCRIPTION_SET_STATUS, {"status": status, "reason": reason, "num": num}
    ).fetchone()
    return to_json(row, num)


def rewind(conn: psycopg.Connection[Any], num: int, to: Any) -> dict[str, Any]:
    """Re-send everything changed after ``to``; safe while deliveries run."""
    when = _in_db_zone(conn, parse_time("to", to))
    row = conn.execute(queries.REWIND, {"num": num, "to": when}).fetchone()
    if row is None:
        current = get(conn, num)  # NotFound if there is no such subscription
        raise InputError("to", f"must not be later than DateTimeStart {current['DateTimeStart']}")
    return to_json(row, num)


def attempts(conn: psycopg.Connection[Any], num: int, limit: int = 100) -> list[dict[str, Any]]:
    """The most recent delivery attempts, newest first."""
    get(conn, num)
    return [
        {
            "AttemptNum": a,
            "At": _iso(at),
            "WindowStart": _iso(ws),
            "WindowEnd": _iso(we),
            "Batch": batch,
            "Rows": n,
            "HttpStatus": status,
            "LatencyMs": ms,
            "ErrorClass": error_class,
        }
        for a, at, ws, we, batch, n, status, ms, error_class in conn.execute(
            queries.ATTEMPTS, (num, limit)
        ).fetchall()
    ]


def remove(conn: psycopg.Connection[Any], num: int) -> dict[str, Any]:
    """Delete; returns what was deleted."""
    return to_json(conn.execute(queries.SUBSCRIPTION_DELETE, (num,)).fetchone(), num)


def to_json(row: Sequence[Any] | None, num: int | None = None) -> dict[str, Any]:
    """Open Dental's field names, plus Status and the delivery state.

    The CLI prints it without UiEventType (``cli_form``): its JSON predates the field.
    """
    if row is None:
        raise NotFound(num)
    (
        sub_num,
        url,
        ws,
        ck,
        wt,
        polling,
        start,
        stop,
        note,
        status,
        reason,
        last_error,
        last_status,
        failures,
        next_at,
        last_attempt,
        last_success,
        in_flight,
        ui_event_type,
    ) = row
    return {
        "SubscriptionNum": sub_num,
        "EndPointUrl": url,
        "Workstation": ws,
        "CustomerKey": ck,
        "WatchTable": wt,
        "PollingSeconds": polling,
        "DateTimeStart": _iso(start),
        "DateTimeStop": _iso(stop),
        "Note": note,
        "Status": status,
        "StatusReason": reason,
        "LastError": last_error,
        "LastHttpStatus": last_status,
        "ConsecutiveFailures": failures,
        "NextAttempt": _iso(next_at),
        "LastAttempt": _iso(last_attempt),
        "LastSuccess": _iso(last_success),
        "InFlight": in_flight,
        "UiEventType": ui_event_type,
    }


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def cli_form(obj: Any) -> Any:
    """A subscription (or a list of them) as the CLI prints it: without UiEventType, which
    the CLI cannot set and whose JSON is a contract from before it."""
    if isinstance(obj, list):
        return [cli_form(o) for o in obj]
    return {k: v for k, v in obj.items() if k != "UiEventType"}
