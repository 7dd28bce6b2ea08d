"""Limits on every value a customer or an operator can send, in one place (see README).

Customers reach these through the REST API, operators through the CLI; both get the same
rules, so a value the CLI refuses is never one the API stored, and the reverse.
"""

from __future__ import annotations

from datetime import UTC, datetime

# Characters per field. A request body holds little more than the sum of these, so the API
# never has to read more than MAX_BODY_BYTES: every field at its limit, each character written
# as the longest JSON escape (12 bytes, a surrogate pair), still fits.
MAX_ENDPOINT_URL = 2048
MAX_WORKSTATION = 255
MAX_CUSTOMER_KEY = 255
MAX_NOTE = 4000
MAX_WATCH_TABLE = 63  # registry names are at most 63 characters, like PostgreSQL identifiers
MAX_SECRET = 100  # whsec_ and base64 of at most 64 bytes is 94
MAX_TIME = 64  # an ISO 8601 time with microseconds and an offset is 32
# The longest Authorization header worth a lookup: "ODFHIR " and a DeveloperKey/CustomerKey
# pair (255 characters each) is the longest credential.
MAX_AUTHORIZATION = 7 + 255 + 1 + 255
MAX_BODY_BYTES = 128 * 1024

# DateTimeStart, DateTimeStop and a rewind's To. Every change is stamped by a database clock,
# so nothing is older than 1900: an earlier start means "everything", which 1900 already means.
# The upper end stays a day short of Python's year 9999, so that reading the time in any zone
# (a naive time in the database's zone, or PostgreSQL's session zone) cannot overflow it.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)


def header_text_problem(value: str, cap: int) -> str | None:
    """Why ``value`` cannot go into an HTTP header we send, or None.

    Header values are bytes; only printable ASCII (U+0020 to U+007E) means the same thing to
    every HTTP library, so anything else (an accent, U+0085, U+2028) is refused here rather
    than failing every delivery later.
    """
    if len(value) > cap:
        return f"must be at most {cap} characters"
    if not all(" " <= c <= "~" for c in value):
        return "must be printable ASCII only (U+0020 to U+007E)"
    return None


def text_problem(value: str, cap: int) -> str | None:
    """Why ``value`` cannot be stored as free text, or None.

    PostgreSQL text cannot hold NUL, and a lone surrogate cannot be encoded as UTF-8.
    """
    if len(value) > cap:
        return f"must be at most {cap} characters"
    if "\x00" in value:
        return "must not contain NUL"
    if any("\ud800" <= c <= "\udfff" for c in value):
        return "must be valid Unicode (no lone surrogates)"
    return None


def time_problem(t: datetime) -> str | None:
    """Why a time is outside the range we accept, or None. A naive time is read as UTC here."""
    try:
        utc = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    except OverflowError:  # an offset pushed it past year 1 or 9999
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        return f"must be from {EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d} (UTC)"
    return None
