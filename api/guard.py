"""Before any route runs: the body-size limit (413), then the API key (401), then the body.

A pure ASGI middleware, so neither check needs the body. An oversized or unauthenticated
request is answered from its headers alone, and the server never reads or buffers its body;
an authenticated one is read up to the limit and no further.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apievents.common import limits

# Where the guard leaves the caller's CustomerKey: request.state.customer_key.
CUSTOMER = "customer_key"
# An Authorization header to its CustomerKey, or None and what to send instead.
Authenticate = Callable[[str | None], Awaitable[tuple[str | None, str]]]


class _Gone(Exception):
    """The client went away while its body was being read."""


class Guard:
    """Refuse oversized bodies and unknown keys before reading a body; then read it, capped.

    ``public`` paths (the OpenAPI document and its viewers) need no key.
    """

    def __init__(
        self, app: ASGIApp, authenticate: Authenticate, public: frozenset[str], max_body: int
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.public = public
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check, then hand the request on with its body already read."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if _too_long(headers.get("content-length"), self.max_body):
            await self._refuse(scope, receive, send, 413, self._too_large())
            return
        if scope["path"] not in self.public:
            customer, why = await self._customer(headers.get("authorization"))
            if customer is None:
                await self._refuse(scope, receive, send, 401, why, {"WWW-Authenticate": "Bearer"})
                return
            scope.setdefault("state", {})[CUSTOMER] = customer
        try:
            body = await _read(receive, self.max_body)
        except _Gone:
            return
        if body is None:  # no Content-Length (chunked), and more than the limit
            await self._refuse(scope, receive, send, 413, self._too_large())
            return
        await self.app(scope, _replay(body, receive), send)

    async def _customer(self, authorization: str | None) -> tuple[str | None, str]:
        if authorization is not None and len(authorization) > limits.MAX_AUTHORIZATION:
            return None, "unknown or revoked key"  # no lookup for what no key can be
        return await self.authenticate(authorization)

    def _too_large(self) -> str:
        return f"body: larger than {self.max_body} bytes"

    @staticmethod
    async def _refuse(
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        # The body was not read: close rather than let the server drain it for keep-alive.
        closing = {"Connection": "close"} | (headers or {})
        response = JSONResponse({"error": message}, status_code=status, headers=closing)
        await response(scope, receive, send)


def _too_long(declared: str | None, cap: int) -> bool:
    if declared is None:
        return False
    # Not digits, or more digits than any sane length: refused without converting it.
    return not declared.isdigit() or len(declared) > 15 or int(declared) > cap


async def _read(receive: Receive, cap: int) -> bytes | None:
    """The whole body, or None as soon as it passes ``cap`` bytes (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Gone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands over the body already read, then whatever comes next."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay
