"""POSTing one batch to an endpoint and classifying the answer. Only 200 is success."""

from __future__ import annotations

import email.utils
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import certifi
import httpcore
import httpx

from apievents.common.logs import error_text
from apievents.common.ssrf import EndpointPolicy, EndpointRefused, resolve

MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Answer:
    """How one POST went."""

    ok: bool
    http_status: int | None = None
    error_class: str | None = None  # http_error, timeout, connection_error, refused, invalid_url
    error: str | None = None
    retry_after: float | None = None
    seconds: float = 0.0

    @property
    def outcome(self) -> str:
        """Label for apievents_deliveries_total."""
        return "success" if self.ok else (self.error_class or "error")


class GuardedBackend(httpcore.SyncBackend):
    """Resolves the host itself, refuses disallowed addresses, and dials the address it checked.

    Checking the address actually dialled defeats DNS rebinding; TLS still verifies the
    certificate against the URL's host name.
    """

    def __init__(self, policy: EndpointPolicy) -> None:
        self.policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        """Connect to the first allowed address of ``host``."""
        error: Exception = EndpointRefused(f"{host} has no address")
        for address in resolve(host, port):
            reason = self.policy.refusal(address)
            if reason:
                error = EndpointRefused(f"{host} resolves to {address}, {reason}")
                continue
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as e:
                error = e
        raise error


class _GuardedTransport(httpx.HTTPTransport):
    def __init__(
        self, policy: EndpointPolicy, ssl_context: ssl.SSLContext, limits: httpx.Limits
    ) -> None:
        super().__init__(verify=ssl_context, limits=limits, trust_env=False)
        # httpx has no hook for the network backend; httpcore's pool does.
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy),
        )


class Sender:
    """A pooled, keep-alive HTTP client shared by the worker's threads; redirects never followed.

    ``timeout`` bounds each network wait and the whole answer: a server that trickles its
    body past it is a timeout.
    """

    def __init__(
        self,
        timeout: float,
        connect_timeout: float,
        concurrency: int,
        policy: EndpointPolicy | None = None,
        ca_bundle: str = "",
    ) -> None:
        self.timeout = timeout
        ssl_context = ssl.create_default_context(cafile=ca_bundle or certifi.where())
        limits = httpx.Limits(
            max_connections=max(concurrency * 2, 10),
            max_keepalive_connections=max(concurrency, 10),
        )
        self.client = httpx.Client(
            transport=_GuardedTransport(policy or EndpointPolicy(), ssl_context, limits),
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": "apievents"},
        )

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        """Send ``body``; read at most 64 KiB of the answer."""
        started = time.perf_counter()
        try:
            with self.client.stream("POST", url, content=body, headers=headers) as resp:
                status = resp.status_code
                retry_after = _retry_after(resp) if status in (429, 503) else None
                if not _read_some(resp, started + self.timeout):
                    return Answer(
                        False,
                        status,
                        "timeout",
                        "answer exceeded the timeout",
                        None,
                        _since(started),
                    )
        except EndpointRefused as e:
            return Answer(False, None, "refused", str(e), None, _since(started))
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


def _read_some(resp: httpx.Response, deadline: float) -> bool:
    """Read at most 64 KiB of the answer; False if the deadline passed first."""
    seen = 0
    for chunk in resp.iter_raw():
        seen += len(chunk)
        if time.perf_counter() > deadline:
            return False
        if seen >= MAX_RESPONSE_BYTES:
            break
    return time.perf_counter() <= deadline


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
