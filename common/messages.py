"""Typed, versioned messages between producer, worker and committer (JSON via orjson)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, ClassVar, Self

import orjson

VERSION = 1


class MessageError(ValueError):
    """A message body that cannot be parsed into the expected type."""


class _Message:
    """Serialisation shared by every message type; each defines ``kind`` and ``from_dict``."""

    kind: ClassVar[str]

    def to_bytes(self) -> bytes:
        """Serialise for the broker."""
        return _dump(self.kind, self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The fields as they are (dataclasses.asdict deep-copies, which costs more than the
        JSON encoding itself on the worker's hot path)."""
        return {name: getattr(self, name) for name in _field_names(type(self))}

    @classmethod
    def from_bytes(cls, body: bytes | str) -> Self:
        """Parse a broker body (py-amqp may hand it over decoded); raises MessageError if bad."""
        return cls.from_dict(_load(cls.kind, body))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Build from a parsed body."""
        raise NotImplementedError


@dataclass(frozen=True)
class Job(_Message):
    """Deliver a subscription's rows after (window_start, after_key), up to window_end.

    ``after_key`` is None when every row at window_start was already delivered.
    """

    kind: ClassVar[str] = "job"
    job_id: str
    subscription: int
    window_start: datetime
    window_end: datetime
    failures: int = 0
    after_key: str | None = None
    watch_table: str | None = None  # lets a worker read the first page with its take-over

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Build from a parsed body."""
        return cls(
            job_id=_uuid(d, "job_id"),
            subscription=_int(d, "subscription"),
            window_start=_time(d, "window_start"),
            window_end=_time(d, "window_end"),
            failures=_int(d, "failures"),
            after_key=_opt_str(d, "after_key"),
            watch_table=_opt_str(d, "watch_table"),
        )


@dataclass(frozen=True)
class Checkpoint(_Message):
    """Progress inside a window: every row up to (position_ts, position_key) got 200.

    It carries the window's attempt-log rows since the last report, so a long window's log
    is written as it goes.
    """

    kind: ClassVar[str] = "checkpoint"
    job_id: str
    holder: str
    subscription: int
    seq: int
    position_ts: datetime
    position_key: str
    rows: int
    window_start: datetime | None = None
    window_end: datetime | None = None
    attempts: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Build from a parsed body."""
        key = _opt_str(d, "position_key")
        if key is None:
            raise MessageError("position_key: expected a string")
        return cls(
            job_id=_uuid(d, "job_id"),
            holder=_uuid(d, "holder"),
            subscription=_int(d, "subscription"),
            seq=_int(d, "seq"),
            position_ts=_time(d, "position_ts"),
            position_key=key,
            rows=_int(d, "rows"),
            window_start=_time(d, "window_start") if d.get("window_start") else None,
            window_end=_time(d, "window_end") if d.get("window_end") else None,
            attempts=_attempts(d),
        )


@dataclass(frozen=True)
class Outcome(_Message):
    """What a worker did with one job: the whole window got 200 (``ok``), or where it stopped."""

    kind: ClassVar[str] = "outcome"
    job_id: str
    holder: str
    subscription: int
    window_start: datetime
    window_end: datetime
    failures: int
    ok: bool
    rows: int = 0
    batches: int = 0
    http_status: int | None = None
    error_class: str | None = None
    error: str | None = None
    retry_after: float | None = None
    # Where the window stopped: the (DateTStamp, key) of its last row answered 200, if any batch
    # was. A failure after progress keeps that progress and does not extend the failure streak.
    position_ts: datetime | None = None
    position_key: str | None = None
    # The window's attempt-log rows not yet written ({batch, rows, http_status, latency_ms,
    # error_class}); the committer writes them with the outcome.
    attempts: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Build from a parsed body."""
        ok = d.get("ok")
        if not isinstance(ok, bool):
            raise MessageError("ok: expected a boolean")
        retry_after = d.get("retry_after")
        if retry_after is not None and not isinstance(retry_after, int | float):
            raise MessageError("retry_after: expected a number")
        return cls(
            job_id=_uuid(d, "job_id"),
            holder=_uuid(d, "holder"),
            subscription=_int(d, "subscription"),
            window_start=_time(d, "window_start"),
            window_end=_time(d, "window_end"),
            failures=_int(d, "failures"),
            ok=ok,
            rows=_int(d, "rows"),
            batches=_int(d, "batches"),
            http_status=_int(d, "http_status") if d.get("http_status") is not None else None,
            error_class=_opt_str(d, "error_class"),
            error=_opt_str(d, "error"),
            retry_after=float(retry_after) if retry_after is not None else None,
            position_ts=_time(d, "position_ts") if d.get("position_ts") is not None else None,
            position_key=_opt_str(d, "position_key"),
            attempts=_attempts(d),
        )


def new_id() -> str:
    """A fresh job or holder id."""
    return str(uuid.uuid4())


def _dump(kind: str, fields: dict[str, Any]) -> bytes:
    return orjson.dumps({"v": VERSION, "type": kind, **fields})


JOBS = "jobs"  # one message carrying several jobs; each window still has its own claim


def jobs_to_bytes(jobs: list[Job]) -> bytes:
    """Jobs as one broker message; a single job keeps the one-job form older workers read."""
    if len(jobs) == 1:
        return jobs[0].to_bytes()
    return _dump(JOBS, {"items": [j.to_dict() for j in jobs]})


def parse_jobs(body: bytes | str) -> list[Job]:
    """The jobs of a message: a Jobs message, or a single Job."""
    d = _load(None, body)
    if d.get("type") == JOBS:
        items = d.get("items")
        if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
            raise MessageError("items: expected a non-empty list of jobs")
        return [Job.from_dict(i) for i in items]
    if d.get("type") != Job.kind:
        raise MessageError(f"expected a job, got {d.get('type')!r}")
    return [Job.from_dict(d)]


Report = Outcome | Checkpoint
REPORTS = "reports"  # one message carrying several reports, each handed on as it was ready


def reports_to_bytes(reports: list[Report]) -> bytes:
    """Several outcomes and checkpoints as one broker message."""
    items = [{"type": r.kind, **r.to_dict()} for r in reports]
    return _dump(REPORTS, {"items": items})


_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(cls))
    return names


def parse_reports(body: bytes | str) -> list[Report]:
    """The reports of a message: a Reports message, or a single Outcome or Checkpoint."""
    d = _load(None, body)
    if d.get("type") == REPORTS:
        items = d.get("items")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise MessageError("items: expected a list of reports")
        return [_report(i) for i in items]
    return [_report(d)]


def _report(d: dict[str, Any]) -> Report:
    if d.get("type") == Checkpoint.kind:
        return Checkpoint.from_dict(d)
    if d.get("type") == Outcome.kind:
        return Outcome.from_dict(d)
    raise MessageError(f"expected an outcome or a checkpoint, got {d.get('type')!r}")


def _load(kind: str | None, body: bytes | str) -> dict[str, Any]:
    try:
        d = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise MessageError(f"not JSON: {e}") from None
    if not isinstance(d, dict):
        raise MessageError("expected a JSON object")
    if d.get("v") != VERSION or (kind is not None and d.get("type") != kind):
        raise MessageError(f"expected {kind} v{VERSION}, got {d.get('type')!r} v{d.get('v')!r}")
    return d


_ATTEMPT_KEYS = {"batch", "rows", "http_status", "latency_ms", "error_class"}


def _attempts(d: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    value = d.get("attempts", [])
    if not isinstance(value, list) or not all(
        isinstance(a, dict) and set(a) == _ATTEMPT_KEYS for a in value
    ):
        raise MessageError("attempts: expected a list of attempt objects")
    return tuple(value)


def _int(d: dict[str, Any], key: str) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise MessageError(f"{key}: expected an integer")
    return v


def _opt_str(d: dict[str, Any], key: str) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise MessageError(f"{key}: expected a string")
    return v


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def _uuid(d: dict[str, Any], key: str) -> str:
    v = d.get(key)
    if isinstance(v, str) and _CANONICAL_UUID.match(v):
        return v  # the form new_id writes: already what str(UUID(v)) would give
    try:
        return str(uuid.UUID(v))
    except (TypeError, ValueError, AttributeError):
        raise MessageError(f"{key}: expected a UUID") from None


def _time(d: dict[str, Any], key: str) -> datetime:
    v = d.get(key)
    try:
        t = datetime.fromisoformat(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise MessageError(f"{key}: expected an ISO 8601 time") from None
    if t.tzinfo is None:
        raise MessageError(f"{key}: time needs a UTC offset")
    return t
