"""POSTing one batch to an endpoint and classifying the answer. Only 200 is success."""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass

import httpx

from common.logs import error_text

MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Answer:
    """How one POST went."""

    ok: bool
    http_status: int | None = None
    error_class: str | None = None  # http_error, timeout, connection_error, invalid_url
    error: str | None = None
    retry_after: float | None = None
    seconds: float = 0.0

    @property
    def outcome(self) -> str:
        """Label for apievents_deliveries_total."""
        return "success" if self.ok else (self.error_class or "error")


class Sender:
    """A pooled, keep-alive HTTP client shared by the worker's threads; redirects never followed."""

    def __init__(self, timeout: float, connect_timeout: float, concurrency: int) -> None:
        self.client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=max(concurrency * 2, 10),
                max_keepalive_connections=max(concurrency, 10),
            ),
            follow_redirects=False,
            verify=True,
            headers={"User-Agent": "apievents"},
        )

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        """Send ``body``; read at most 64 KiB of the answer."""
        started = time.perf_counter()
        try:
            with self.client.stream("POST", url, content=body, headers=headers) as resp:
                _read_some(resp)
                status = resp.status_code
                retry_after = _retry_after(resp) if status in (429, 503) else None
        except httpx.TimeoutException as e:
            return Answer(False, None, "timeout", error_text(e), None, _since(started))
        except httpx.InvalidURL as e:
            return Answer(False, None, "invalid_url", error_text(e), None, _since(started))
        except (httpx.HTTPError, OSError) as e:
            return Answer(False, None, "connection_error", error_text(e), None, _since(started))
        if status == 200:
            return Answer(True, status, seconds=_since(started))
        return Answer(False, status, "http_error", f"HTTP {status}", retry_after, _since(started))

    def close(self) -> None:
        """Close pooled connections."""
        self.client.close()


def _read_some(resp: httpx.Response) -> None:
    seen = 0
    for chunk in resp.iter_raw():
        seen += len(chunk)
        if seen >= MAX_RESPONSE_BYTES:
            break


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _since(started: float) -> float:
    return time.perf_counter() - started
