"""Subscription input, checked before any database work: each field's rules, and the endpoint.

Nothing here needs a database connection, so the API checks a request, and waits for the
endpoint's DNS answer, before it takes a connection from its pool (see ``screen``).
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from apievents.common import limits
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
TIMES = ("date_time_start", "date_time_stop")
# Open Dental's UI events fire inside its program, on a user's action; there is no such
# program here, so a subscription may carry one (it is stored and answered) but only its
# WatchTable is delivered.
UI_EVENT_TYPES = ("", "PatientSelected")
# Open Dental's "no date": a DateTimeStop of 0001-01-01 means the subscription never stops.
NO_STOP = datetime(1, 1, 1)
# Sent as HTTP headers of every delivery (Workstation, Authorization).
_HEADERS = {"workstation": limits.MAX_WORKSTATION, "customer_key": limits.MAX_CUSTOMER_KEY}
DNS_TIMEOUT = 5.0  # the default of APIEVENTS_DNS_TIMEOUT_SECONDS


class InputError(ValueError):
    """Bad subscription input; ``column`` says which field."""

    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column = column

    @property
    def flag(self) -> str:
        """The CLI flag of the field."""
        return "--" + self.column.replace("_", "-")


class Screened(dict[str, Any]):
    """Input that passed ``screen``: every rule that needs no database, the endpoint included."""


def screen(
    values: Mapping[str, Any],
    policy: EndpointPolicy,
    *,
    dns_timeout: float = DNS_TIMEOUT,
    creating: bool = False,
) -> Screened:
    """Check and normalise every field, then the endpoint's addresses (within ``dns_timeout``).

    WatchTable names and naive times are checked against the database later
    (``subscriptions.validate``); every other problem is an InputError naming its field.
    """
    if creating:
        _database_events_only(values)
    out = Screened()
    for column, raw in values.items():
        if column not in FIELDS:
            raise InputError(column, "unknown field")
        if raw is None and column not in TIMES:
            raise InputError(column, "must not be empty")
        out[column] = _check(column, raw)
    if "endpoint_url" in out:
        try:
            policy.check(out["endpoint_url"], timeout=dns_timeout)
        except EndpointRefused as e:
            raise InputError("endpoint_url", f"refused: {e}") from None
    return out


def _database_events_only(values: Mapping[str, Any]) -> None:
    """A new subscription to a UI event alone (as Open Dental's clients send it, with no
    WatchTable and PollingSeconds 0) gets the reason first, not a complaint about a field."""
    if values.get("ui_event_type") and not values.get("watch_table"):
        raise InputError(
            "ui_event_type",
            f"{values['ui_event_type']} is a UI event, which fires inside the Open Dental "
            "program; apievents delivers database events only: name a WatchTable",
        )


def _check(column: str, raw: Any) -> Any:
    if column == "endpoint_url":
        return check_url(_text(column, raw))
    if column == "polling_seconds":
        return _positive_int(column, raw)
    if column == "date_time_stop" and raw is not None and _no_stop(raw):
        return None
    if column in TIMES:
        return None if raw is None else parse_time(column, raw)
    if column == "ui_event_type":
        if raw not in UI_EVENT_TYPES:
            raise InputError(column, "must be PatientSelected or empty")
        return raw
    if column == "secret":
        return check_secret(raw)
    text = _text(column, raw)
    if column == "watch_table":
        problem = limits.text_problem(text, limits.MAX_WATCH_TABLE)
    elif column == "note":
        problem = limits.text_problem(text, limits.MAX_NOTE)
    else:
        problem = limits.header_text_problem(text, _HEADERS[column])
    if problem:
        raise InputError(column, problem)
    return text


def _no_stop(raw: Any) -> bool:
    """Open Dental's 0001-01-01 (any time of day, any offset) as a DateTimeStop: never."""
    if isinstance(raw, datetime):
        return raw.replace(tzinfo=None).date() == NO_STOP.date()
    text = str(raw).strip()
    return len(text) <= 40 and text.startswith("0001-01-01")


def _text(column: str, raw: Any) -> str:
    if not isinstance(raw, str):
        raise InputError(column, "must be text")
    return raw


def check_secret(raw: Any) -> str:
    """A Standard Webhooks secret: ``whsec_`` and base64 of 24 to 64 random bytes."""
    text = raw if isinstance(raw, str) and len(raw) <= limits.MAX_SECRET else ""
    try:
        key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        key = b""
    if not text.startswith("whsec_") or not 24 <= len(key) <= 64:
        raise InputError("secret", "must be whsec_ followed by base64 of 24 to 64 bytes")
    return text


def check_url(url: str) -> str:
    """An absolute http(s) URL with a host; raises InputError otherwise."""
    cap = limits.MAX_ENDPOINT_URL
    if len(url) > cap or not url.isprintable() or " " in url:
        # isprintable() is False for NUL, every control and format character, lone
        # surrogates, and separators such as U+2028 (all of which some parser reads apart).
        raise InputError(
            "endpoint_url",
            f"must be a URL without spaces or control characters, at most {cap} characters",
        )
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
        if ascii_host(host) is None:
            raise InputError("endpoint_url", f"host {host!r} is not a valid name") from None
    return url


_HOST_NAME = re.compile(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*\.?")


def ascii_host(host: str) -> str | None:
    """A URL's (lower-case) host name in its ASCII form, or None if it is not a plain name.

    Letters, digits, hyphens and underscores only, after IDNA: a name such as ``%61.test``,
    which one URL parser keeps and another decodes to ``a.test``, is not a name here.
    """
    try:
        name = host.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    return name if _HOST_NAME.fullmatch(name) else None


def _positive_int(column: str, raw: Any) -> int:
    try:
        value = int(raw) if not isinstance(raw, bool) else None
    except (TypeError, ValueError):
        value = None
    if value is None or str(value) != str(raw).strip() or value <= 0 or value > 86400 * 7:
        raise InputError(column, "must be a whole number of seconds from 1 to 604800")
    return value


def parse_time(column: str, raw: Any) -> datetime:
    """ISO 8601 within the accepted years (see limits); a time without an offset is read in the
    database server's time zone (``subscriptions.validate``), and checked again then."""
    if isinstance(raw, datetime):
        t = raw
    else:
        text = str(raw).strip()
        try:
            if len(text) > limits.MAX_TIME or not text.isprintable():  # C's parser stops at NUL
                raise ValueError(text)
            t = datetime.fromisoformat(text)
        except ValueError:
            shown = text[: limits.MAX_TIME]
            raise InputError(column, f"is not an ISO 8601 time: {shown!r}") from None
    problem = limits.time_problem(t)
    if problem:
        raise InputError(column, problem)
    return t
