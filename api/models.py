"""Request and response shapes, with Open Dental's field names (documented in /openapi.json)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from apievents.common import limits

_ASCII = "Printable ASCII only (U+0020 to U+007E)"


class SubscriptionIn(BaseModel):
    """Fields a caller may set. A PUT changes only the fields it names."""

    model_config = ConfigDict(extra="forbid")

    EndPointUrl: str | None = Field(
        None,
        max_length=limits.MAX_ENDPOINT_URL,
        description="http(s) URL that receives the POSTs; no spaces or control characters.",
    )
    Workstation: str | None = Field(
        None,
        max_length=limits.MAX_WORKSTATION,
        description=f"Sent as the Workstation header. {_ASCII}.",
    )
    WatchTable: str | None = Field(
        None, max_length=limits.MAX_WATCH_TABLE, description="A name from GET /watchtables."
    )
    PollingSeconds: int | None = Field(None, description="How often to look for changes.")
    UiEventType: str | None = Field(
        None,
        max_length=64,
        description="Open Dental's UI event (PatientSelected) or empty; stored and answered, "
        "but only the WatchTable's database events are delivered.",
    )
    DateTimeStart: str | None = Field(
        None,
        max_length=limits.MAX_TIME,
        description="ISO 8601 or yyyy-MM-dd[ HH:mm:ss], 1900 to 9999-12-30; default now.",
    )
    DateTimeStop: str | None = Field(
        None,
        max_length=limits.MAX_TIME,
        description="ISO 8601 or yyyy-MM-dd[ HH:mm:ss], 1900 to 9999-12-30; default never; "
        '"0001-01-01 00:00:00": never.',
    )
    Note: str | None = Field(None, max_length=limits.MAX_NOTE, description="Any text but NUL.")
    Secret: str | None = Field(
        None, max_length=limits.MAX_SECRET, description="whsec_...; generated if omitted on POST."
    )
    CustomerKey: str | None = Field(
        None, description="Ignored: always the CustomerKey of the caller's API key."
    )


class SubscriptionOut(BaseModel):
    """A subscription and its delivery state."""

    SubscriptionNum: int
    EndPointUrl: str
    Workstation: str
    CustomerKey: str
    WatchTable: str
    PollingSeconds: int
    UiEventType: str = Field("", description="Open Dental's UI event, as given; not delivered.")
    DateTimeStart: str
    DateTimeStop: str | None
    Note: str
    Status: str
    StatusReason: str | None
    LastError: str | None = Field(
        description="Why the last window failed, as a class: http_error, timeout, "
        "connection_error, refused, ... (never the raw error text)."
    )
    LastHttpStatus: int | None
    ConsecutiveFailures: int
    NextAttempt: str | None
    LastAttempt: str | None
    LastSuccess: str | None
    InFlight: bool
    Secret: str | None = Field(None, description="Only in the answer to POST.")


class WatchTableOut(BaseModel):
    WatchTable: str
    Table: str
    KeyColumn: str
    TimestampColumn: str
    Fields: dict[str, str]
    Format: str = Field("iso", description="Payload format: iso or opendental.")


class AttemptOut(BaseModel):
    AttemptNum: int
    At: str
    WindowStart: str
    WindowEnd: str
    Batch: int
    Rows: int
    HttpStatus: int | None
    LatencyMs: int
    ErrorClass: str | None


class RewindIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    To: str = Field(
        max_length=limits.MAX_TIME, description="ISO 8601; re-send everything changed since."
    )


class ErrorOut(BaseModel):
    error: str
