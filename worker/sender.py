"""POSTing one batch to an endpoint and classifying the answer. Only 200 is success.

libcurl (pycurl) on the worker's event loop (``worker/curl.py``): the cheapest maintained
client measured for small POSTs (docs/performance.md). Endpoint URLs are untrusted:
- names are resolved here, on our lookup threads, and only the vetted addresses are handed to
  libcurl (``CURLOPT_RESOLVE``), which never resolves a name itself;
- every socket libcurl opens is vetted again against the address it dials, so neither DNS
  rebinding nor a URL that libcurl reads apart from Python can reach a refused address;
- HTTP/1.1 and http(s) only, no redirects, no proxy (environment variables are ignored), no
  cookies, no decompression; TLS verifies the certificate and the URL's host name against
  ``APIEVENTS_CA_BUNDLE`` (certifi's bundle by default) and nothing else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import certifi
import pycurl

from apievents.common.inputs import ascii_host
from apievents.common.ssrf import EndpointPolicy, EndpointRefused
from apievents.worker.curl import Transfers
from apievents.worker.resolver import GuardedResolver

MAX_RESPONSE_BYTES = 64 * 1024
KEEPALIVE_SECONDS = 30  # an idle pooled connection older than this is not reused
_HTTP = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS


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


class SenderClosed(ConnectionError):
    """The sender was closed (the worker is stopping) before or while this POST ran."""


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
        self.total_ms = round((timeout + connect_timeout) * 1000)
        self.connect_ms = round(connect_timeout * 1000)
        self.ca_bundle = ca_bundle or certifi.where()
        self.resolver = GuardedResolver(self.policy, dns_timeout)
        self.concurrency = concurrency
        self.transfers: Transfers | None = None  # made on the loop, at the first POST
        self.idle: list[pycurl.Curl] = []  # easy handles keep their options between POSTs
        self.closed = False

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        """Send ``body``; read at most 64 KiB of the answer. The deadline covers the lookup."""
        started = time.perf_counter()
        lines = _header_lines(headers)
        try:
            target = _target(url)
            async with asyncio.timeout(self.total_ms / 1000):
                resolve = await self._resolve(target)
        except EndpointRefused as e:
            return Answer(False, None, "refused", str(e), None, _since(started))
        except ValueError as e:
            return Answer(False, None, "invalid_url", str(e), None, _since(started))
        except TimeoutError:
            return Answer(False, None, "timeout", "no address in time", None, _since(started))
        left_ms = self.total_ms - round(_since(started) * 1000)
        if left_ms <= 0:
            return Answer(False, None, "timeout", "no address in time", None, _since(started))
        if self.closed:
            raise SenderClosed
        if self.transfers is None:
            self.transfers = Transfers(self.concurrency)
        exchange = _Exchange(self.policy)
        handle = self._handle()
        try:
            handle.setopt(pycurl.URL, target.url)
            handle.setopt(pycurl.RESOLVE, resolve)
            handle.setopt(pycurl.POSTFIELDS, body)
            handle.setopt(pycurl.HTTPHEADER, lines)
            handle.setopt(pycurl.TIMEOUT_MS, left_ms)
            handle.setopt(pycurl.WRITEFUNCTION, exchange.write)
            handle.setopt(pycurl.OPENSOCKETFUNCTION, exchange.open_socket)
            errno, message = await self.transfers.run(handle)
        except pycurl.error as e:  # an option libcurl refused: nothing was sent
            handle.close()
            return Answer(False, None, "invalid_url", str(e), None, _since(started))
        except BaseException:  # cancelled mid-POST: its connection was closed
            handle.close()
            raise
        finally:
            exchange.close()
        if self.closed:  # close() aborted it: the POST may or may not have been read
            handle.close()
            raise SenderClosed
        status = handle.getinfo(pycurl.RESPONSE_CODE)
        retry_after = handle.getinfo(pycurl.RETRY_AFTER) if status in (429, 503) else 0
        self._put_back(handle)
        if exchange.refused:
            return Answer(False, None, "refused", exchange.refused, None, _since(started))
        if errno and not (errno == pycurl.E_WRITE_ERROR and exchange.cut):
            if errno == pycurl.E_COULDNT_CONNECT and resolve:
                self.resolver.forget(target.host, target.port)
            error_class = _ERROR_CLASSES.get(errno, "connection_error")
            return Answer(False, None, error_class, message, None, _since(started))
        if status == 200:
            return Answer(True, status, seconds=_since(started))
        retry = float(retry_after) if retry_after > 0 else None
        return Answer(False, status, "http_error", f"HTTP {status}", retry, _since(started))

    async def _resolve(self, target: _Target) -> list[str]:
        """The CURLOPT_RESOLVE entry that pins ``target``'s name to its vetted addresses."""
        if target.literal:  # libcurl dials a literal without resolving: vet it here
            reason = _literal_refusal(self.policy, target.host)
            if reason:
                raise EndpointRefused(f"{target.host} is {reason}")
            return []
        found = await self.resolver.addresses(target.host, target.port)
        listed = ",".join(f"[{a}]" if ":" in a else a for a in found)
        return [f"{target.host}:{target.port}:{listed}"]

    def _put_back(self, handle: pycurl.Curl) -> None:
        """Keep a finished handle for the next POST, without this one's body, headers (the
        customer's key among them) or callbacks."""
        handle.setopt(pycurl.POSTFIELDS, b"")
        handle.unsetopt(pycurl.HTTPHEADER)
        handle.setopt(pycurl.WRITEFUNCTION, _discard)
        handle.setopt(pycurl.OPENSOCKETFUNCTION, _no_socket)
        self.idle.append(handle)

    def _handle(self) -> pycurl.Curl:
        if self.idle:
            return self.idle.pop()
        handle = pycurl.Curl()
        for option, value in (
            (pycurl.NOSIGNAL, 1),
            (pycurl.PROTOCOLS, _HTTP),
            (pycurl.REDIR_PROTOCOLS, _HTTP),
            (pycurl.FOLLOWLOCATION, 0),
            (pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1),
            (pycurl.PROXY, ""),  # an empty proxy: the environment's proxy variables are ignored
            (pycurl.NOPROXY, "*"),
            (pycurl.CAINFO, self.ca_bundle),
            (pycurl.SSL_VERIFYPEER, 1),
            (pycurl.SSL_VERIFYHOST, 2),
            (pycurl.CONNECTTIMEOUT_MS, self.connect_ms),
            (pycurl.USERAGENT, "apievents"),
            (pycurl.MAXAGE_CONN, KEEPALIVE_SECONDS),
        ):
            handle.setopt(option, value)
        handle.unsetopt(pycurl.CAPATH)  # the bundle alone, not a directory compiled in
        return handle

    async def close(self) -> None:
        """Close pooled connections and the lookup threads; a POST still running is aborted
        and raises SenderClosed."""
        self.closed = True
        if self.transfers is not None:
            self.transfers.close()
        for handle in self.idle:
            handle.close()
        self.idle.clear()
        self.resolver.close()


# The rest are connection errors; E_UNSUPPORTED_PROTOCOL among them, since the scheme is
# checked before libcurl sees the URL: libcurl says it of an answer that is not HTTP.
_ERROR_CLASSES = {pycurl.E_OPERATION_TIMEDOUT: "timeout", pycurl.E_URL_MALFORMAT: "invalid_url"}


def _discard(chunk: bytes) -> None:
    """An idle handle's answer sink (it has no answer to read)."""


def _no_socket(_purpose: int, _address: object) -> int:
    """An idle handle opens no connection."""
    return pycurl.SOCKET_BAD


class _Exchange:
    """One POST's callbacks: the answer's size, and the address guard at connect."""

    __slots__ = ("cut", "policy", "refused", "seen", "sockets")

    def __init__(self, policy: EndpointPolicy) -> None:
        self.policy = policy
        self.seen = 0
        self.cut = False
        self.refused: str | None = None
        self.sockets: list[socket.socket] = []  # libcurl works on duplicates of these

    def close(self) -> None:
        """Close our sockets: libcurl keeps (and closes) its own duplicates."""
        for sock in self.sockets:
            sock.close()

    def write(self, chunk: bytes) -> int | None:
        """Take the answer up to 64 KiB; past that, stop (libcurl drops the connection)."""
        self.seen += len(chunk)
        if self.seen > MAX_RESPONSE_BYTES:
            self.cut = True
            return 0
        return None

    def open_socket(self, _purpose: int, address: tuple[int, int, int, Any]) -> Any:
        """The socket for a new connection, if its address is allowed (checked at connect)."""
        family, socktype, protocol, sockaddr = address
        dialled = str(sockaddr[0])
        reason = self.policy.refusal(dialled)
        if reason:
            self.refused = f"connecting to {dialled} refused: {reason}"
            return pycurl.SOCKET_BAD
        try:
            sock = socket.socket(family, socktype, protocol)
        except OSError:  # out of file descriptors, say: a connection error, not a traceback
            return pycurl.SOCKET_BAD
        self.sockets.append(sock)
        return sock


# What stays as written in a URL's parts (RFC 3986, with "%" so escapes stay escapes);
# anything else, non-ASCII above all, is percent-encoded in UTF-8 as browsers do.
_USERINFO = "%:!$&'()*+,;=-._~"
_PATH = _USERINFO + "@/"
_QUERY = _PATH + "?"


@dataclass(frozen=True)
class _Target:
    url: str  # rebuilt from what Python parsed, the host in its ASCII form
    host: str
    port: int
    literal: bool


@lru_cache(maxsize=4096)
def _target(url: str) -> _Target:
    """Endpoint URLs repeat every poll: parse each once."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("not an http(s) URL with a host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    literal = _is_address(host)
    if not literal:
        name = ascii_host(host)  # libcurl decodes %61 to "a": only plain names go on
        if name is None:
            raise ValueError("host is not a valid name")
        host = name
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:  # as written: the Host header names a default port only if
        netloc += f":{port}"  # the URL did
    userinfo = parts.netloc.rpartition("@")[0]
    if userinfo:
        netloc = f"{quote(userinfo, safe=_USERINFO)}@{netloc}"
    path, query = quote(parts.path or "/", safe=_PATH), quote(parts.query, safe=_QUERY)
    rebuilt = urlunsplit((parts.scheme, netloc, path, query, ""))
    return _Target(rebuilt, host, port, literal)


@lru_cache(maxsize=4096)
def _literal_refusal(policy: EndpointPolicy, address: str) -> str | None:
    """Why a literal address is refused: the answer for an address and a policy never
    changes, and literals repeat every poll."""
    return policy.refusal(address)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _header_lines(headers: dict[str, str]) -> list[bytes]:
    """libcurl's header lines, in UTF-8. "Name;" sends an empty value: libcurl drops a
    header whose value is blank ("Name:"), and the empty one must still go out."""
    lines = [f"{k}: {v}" if v.strip() else f"{k};" for k, v in headers.items()]
    if any("\r" in line or "\n" in line or "\0" in line for line in lines):
        raise ValueError("a header holds a line break")
    lines.append("Expect:")  # no 100-continue round trip before a large body
    return [line.encode() for line in lines]


def _since(started: float) -> float:
    return time.perf_counter() - started
