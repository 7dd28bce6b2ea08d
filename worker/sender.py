"""POSTing one batch to an endpoint and classifying the answer. Only 200 is success.

aiohttp on the worker's event loop: the cheapest maintained client measured for small POSTs
(docs/performance.md). Endpoint URLs are untrusted: the connector's resolver vets every
address a host resolves to and hands aiohttp only the vetted ones, so the address dialled is
one that was checked (DNS rebinding cannot slip past); an IP literal, which aiohttp never
resolves, is vetted before the request. TLS still verifies the certificate against the URL's
host name.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import certifi
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from apievents.common.logs import error_text
from apievents.common.ssrf import EndpointPolicy, EndpointRefused
from apievents.common.threads import DaemonThreads

MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = {"User-Agent": "apievents"}


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


class GuardedResolver(AbstractResolver):
    """Resolves with a timeout and returns only the addresses the policy allows.

    Lookups run on threads of their own: a lookup that hangs keeps its thread until the
    system resolver gives up, and one customer's hanging names must not take the threads
    every other lookup (and the rest of the loop's work) needs.
    """

    def __init__(self, policy: EndpointPolicy, timeout: float, threads: int = 64) -> None:
        self.policy = policy
        self.timeout = timeout
        self.threads = DaemonThreads(threads, "dns")  # a hung lookup never holds the exit

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        """Every allowed address of ``host``; EndpointRefused if there is none."""
        # socket.getaddrinfo, as the check at creation uses (uvloop's own resolver would
        # answer from elsewhere); it runs only for a new connection, on a lookup thread.
        lookup = functools.partial(socket.getaddrinfo, host, port, family, socket.SOCK_STREAM)
        try:
            infos = await asyncio.wait_for(self.threads.submit(lookup), self.timeout)
        except (OSError, UnicodeError, TimeoutError) as e:
            raise EndpointRefused(f"{host} does not resolve ({type(e).__name__})") from None
        found: list[ResolveResult] = []
        reason = f"{host} has no address"
        for fam, _, proto, _, sockaddr in infos:
            address = str(sockaddr[0])
            refusal = self.policy.refusal(address)
            if refusal:
                reason = f"{host} resolves to {address}, {refusal}"
                continue
            found.append(
                ResolveResult(
                    hostname=host,
                    host=address,
                    port=port,
                    family=fam,
                    proto=proto,
                    flags=socket.AI_NUMERICHOST,
                )
            )
        if not found:
            raise EndpointRefused(reason)
        return found

    async def close(self) -> None:
        """Let the lookup threads go (a hanging one ends when the system resolver does)."""
        self.threads.shutdown()


class Sender:
    """A pooled, keep-alive HTTP client on the worker's loop; redirects never followed.

    Each POST has a hard deadline, from connect to the last byte of the answer: the connect
    timeout plus the answer timeout. A receiver that trickles its answer is cut there, which
    keeps every POST inside the lease that was extended right before it.
    """

    def __init__(
        self,
        timeout: float,
        connect_timeout: float,
        concurrency: int,
        policy: EndpointPolicy | None = None,
        ca_bundle: str = "",
        dns_timeout: float = 5.0,
    ) -> None:
        self.policy = policy or EndpointPolicy()
        self.timeout = aiohttp.ClientTimeout(
            total=timeout + connect_timeout, sock_connect=connect_timeout
        )
        ssl_context = ssl.create_default_context(cafile=ca_bundle or certifi.where())
        self.resolver = GuardedResolver(self.policy, dns_timeout)
        self.connector = aiohttp.TCPConnector(
            limit=concurrency,
            limit_per_host=0,
            ssl=ssl_context,
            resolver=self.resolver,
            ttl_dns_cache=10,
            keepalive_timeout=30,
        )
        self.session = aiohttp.ClientSession(
            connector=self.connector,
            trust_env=False,  # proxy variables are ignored: we dial what we vetted
            # No cookie jar: a cookie one customer's endpoint sets must never reach another's
            # on the same host. No decompression: an answer is read only to its first 64 KiB.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding",),
            raise_for_status=False,
        )

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        """Send ``body``; read at most 64 KiB of the answer."""
        started = time.perf_counter()
        try:
            _vet_literal(self.policy, url)
            async with self.session.post(
                _url(url),
                data=body,
                headers=headers | USER_AGENT,
                allow_redirects=False,
                timeout=self.timeout,
            ) as resp:
                status = resp.status
                retry_after = _retry_after(resp) if status in (429, 503) else None
                if status == 200:
                    await _read_some(resp)
                else:  # its connection is not reused: an odd answer (a 204 with a body,
                    resp.close()  # say) could leave bytes that garble the next one

        except EndpointRefused as e:
            return Answer(False, None, "refused", str(e), None, _since(started))
        except TimeoutError:
            return Answer(False, None, "timeout", "no full answer in time", None, _since(started))
        except aiohttp.InvalidURL as e:
            return Answer(False, None, "invalid_url", error_text(e), None, _since(started))
        except (aiohttp.ClientError, OSError) as e:
            cause = e.__cause__ if isinstance(e.__cause__, EndpointRefused) else None
            if cause is not None:
                return Answer(False, None, "refused", str(cause), None, _since(started))
            return Answer(False, None, "connection_error", error_text(e), None, _since(started))
        if status == 200:
            return Answer(True, status, seconds=_since(started))
        return Answer(False, status, "http_error", f"HTTP {status}", retry_after, _since(started))

    async def close(self) -> None:
        """Close pooled connections and the lookup threads."""
        await self.session.close()
        await self.resolver.close()


@lru_cache(maxsize=4096)
def _vet_literal(policy: EndpointPolicy, url: str) -> None:
    """aiohttp dials an IP literal without asking the resolver: vet it here. Cached: the
    answer for a URL and a policy never changes (a refusal raises, and is not cached)."""
    host = _literal_host(url)
    if host is not None:
        reason = policy.refusal(host)
        if reason:
            raise EndpointRefused(f"{host} is {reason}")


@lru_cache(maxsize=4096)
def _url(url: str) -> yarl.URL:
    """Endpoint URLs repeat every poll: parse each once (a measurable share of a POST)."""
    return yarl.URL(url)


@lru_cache(maxsize=4096)
def _literal_host(url: str) -> str | None:
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    return host


async def _read_some(resp: aiohttp.ClientResponse) -> None:
    """Read at most 64 KiB of the answer; a longer one is cut and its connection dropped."""
    seen = 0
    while seen < MAX_RESPONSE_BYTES:
        chunk = await resp.content.read(MAX_RESPONSE_BYTES - seen)
        if not chunk or resp.content.at_eof():
            return
        seen += len(chunk)
    resp.close()


def _retry_after(resp: Any) -> float | None:
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
