"""Logs are events: one JSON object per line with stable keys, never a secret or a payload."""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

# Record attributes that are not event fields (color_message: uvicorn's terminal copy).
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as ``{"ts", "level", "logger", "event", ...extra fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON line."""
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        out.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
        if record.exc_info and record.exc_info[0] is not None:
            out["exception"] = record.exc_info[0].__name__
        return redact(orjson.dumps(out, default=str).decode())


def setup(level: str) -> None:
    """Send JSON lines to stderr at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pika", "amqp", "kombu", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def error_text(exc: BaseException) -> str:
    """A one-line description of an error that is safe to store and log (no payload data)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return redact(f"{type(exc).__name__}: {text}")[:500]


# Credentials that a library may put in its own messages: a URL's user:password@ (a database
# or broker URL, even a mistyped one) and libpq's password=... setting.
_URL_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*:/*[^\s:/@\"']*):[^\s@\"']*@")
_PASSWORD = re.compile(r"(?i)(password\s*=\s*)('[^']*'|[^\s\"',]+)")


def redact(text: str) -> str:
    """``text`` without passwords: what a log line or a stored error may show."""
    return _PASSWORD.sub(r"\1***", _URL_USERINFO.sub(r"\1:***@", text))
