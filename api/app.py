"""Routes of the Subscriptions API. Every subscription belongs to the caller's CustomerKey.

No ``from __future__ import annotations`` here: FastAPI reads the dependency annotations at
run time, and they refer to names local to create_app.
"""

from collections.abc import Iterator
from typing import Annotated, Any

import psycopg
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from apievents.api.guard import CUSTOMER, Guard
from apievents.api.models import (
    AttemptOut,
    ErrorOut,
    RewindIn,
    SubscriptionIn,
    SubscriptionOut,
    WatchTableOut,
)
from apievents.common import api_keys, inputs, limits, registry, subscriptions
from apievents.common.ssrf import EndpointPolicy

COLUMN_OF = {name: column for column, name in subscriptions.FIELDS.items()}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Bad input; the message names the field."},
    401: {"model": ErrorOut, "description": "No valid API key."},
    404: {"model": ErrorOut, "description": "No such subscription for this customer."},
    413: {"model": ErrorOut, "description": f"A body over {limits.MAX_BODY_BYTES} bytes."},
}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_app(
    pool: ConnectionPool,
    policy: EndpointPolicy,
    secret_overlap: float,
    margin: float = 0.05,
    *,
    dns_timeout: float = inputs.DNS_TIMEOUT,
    max_subscriptions: int = 0,
    max_body: int = limits.MAX_BODY_BYTES,
) -> FastAPI:
    """The ASGI application.

    ``max_subscriptions`` caps each CustomerKey's subscriptions (0: no cap); ``dns_timeout``
    bounds the endpoint's DNS lookup, which runs before a request takes a pool connection.
    """
    app = FastAPI(title="apievents", version="1", description=__doc__)
    # Only to declare the bearer scheme in /openapi.json: the Guard checks the key, before the
    # body is read.
    bearer = HTTPBearer(auto_error=False)

    async def authenticate(key: str) -> str | None:
        def lookup() -> str | None:
            with pool.connection() as conn:
                return api_keys.customer_of(conn, key)

        return await run_in_threadpool(lookup)

    docs = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    app.add_middleware(
        Guard,
        authenticate=authenticate,
        public=frozenset(p for p in docs if p),
        max_body=max_body,
    )

    def connection() -> Iterator[psycopg.Connection[Any]]:
        with pool.connection() as conn:
            yield conn

    Conn = Annotated[psycopg.Connection[Any], Depends(connection)]
    Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]

    def customer(request: Request, creds: Creds) -> str:
        found = request.scope.get("state", {}).get(CUSTOMER)
        if not isinstance(found, str):  # the Guard sets it on every route that needs a key
            raise ApiError(401, "send Authorization: Bearer <ApiKey>")
        return found

    Customer = Annotated[str, Depends(customer)]

    def screened(body: SubscriptionIn, **extra: str) -> inputs.Screened:
        """The body's fields checked, the endpoint's DNS included, holding no connection."""
        named = body.model_dump(exclude_unset=True, exclude={"CustomerKey"})
        values = {COLUMN_OF[k]: v for k, v in named.items()} | extra
        return inputs.screen(values, policy, dns_timeout=dns_timeout)

    def owned(conn: psycopg.Connection[Any], num: int, customer_key: str) -> dict[str, Any]:
        try:
            sub = subscriptions.get(conn, num)
        except subscriptions.NotFound:
            sub = None
        if sub is None or sub["CustomerKey"] != customer_key:
            raise ApiError(404, f"no subscription {num}")  # never reveal other customers'
        return public(sub)

    @app.exception_handler(ApiError)
    def api_error(request: Request, e: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse({"error": str(e)}, status_code=e.status, headers=headers)

    @app.exception_handler(subscriptions.InputError)
    def input_error(request: Request, e: subscriptions.InputError) -> JSONResponse:
        field = subscriptions.FIELDS.get(e.column, e.column)
        return JSONResponse({"error": f"{field}: {e}"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        """FastAPI's own errors (unparseable body, unknown route) in our error shape."""
        return JSONResponse(
            {"error": str(e.detail)}, status_code=e.status_code, headers=getattr(e, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        return JSONResponse({"error": f"{where}: {first['msg']}"}, status_code=400)

    @app.get("/subscriptions", response_model=list[SubscriptionOut], responses=ERRORS)
    def list_subscriptions(conn: Conn, ck: Customer) -> list[dict[str, Any]]:
        """The caller's subscriptions."""
        return [public(s) for s in subscriptions.list_all(conn, customer_key=ck)]

    @app.post("/subscriptions", status_code=201, response_model=SubscriptionOut, responses=ERRORS)
    def create_subscription(body: SubscriptionIn, ck: Customer) -> dict[str, Any]:
        """Create; the answer shows the signing secret this once."""
        values = screened(body, customer_key=ck)
        with pool.connection() as conn:
            return public(
                subscriptions.create(
                    conn, values, policy, margin, max_per_customer=max_subscriptions
                )
            )

    @app.get("/subscriptions/{num}", response_model=SubscriptionOut, responses=ERRORS)
    def get_subscription(num: int, conn: Conn, ck: Customer) -> dict[str, Any]:
        """One subscription."""
        return owned(conn, num, ck)

    @app.put("/subscriptions/{num}", response_model=SubscriptionOut, responses=ERRORS)
    def update_subscription(num: int, body: SubscriptionIn, ck: Customer) -> dict[str, Any]:
        """Change only the fields named in the body."""
        values = screened(body)
        with pool.connection() as conn:
            owned(conn, num, ck)
            return public(subscriptions.update(conn, num, values, policy, secret_overlap))

    @app.delete("/subscriptions/{num}", response_model=SubscriptionOut, responses=ERRORS)
    def delete_subscription(num: int, conn: Conn, ck: Customer) -> dict[str, Any]:
        """Delete; answers with what was deleted."""
        owned(conn, num, ck)
        return public(subscriptions.remove(conn, num))

    @app.get("/subscriptions/{num}/attempts", response_model=list[AttemptOut], responses=ERRORS)
    def list_attempts(num: int, conn: Conn, ck: Customer) -> list[dict[str, Any]]:
        """Recent delivery attempts, newest first."""
        owned(conn, num, ck)
        return subscriptions.attempts(conn, num)

    @app.post("/subscriptions/{num}/rewind", response_model=SubscriptionOut, responses=ERRORS)
    def rewind(num: int, body: RewindIn, conn: Conn, ck: Customer) -> dict[str, Any]:
        """Re-send everything changed since To."""
        owned(conn, num, ck)
        return public(subscriptions.rewind(conn, num, body.To))

    @app.get("/watchtables", response_model=list[WatchTableOut], responses=ERRORS)
    def watch_tables(conn: Conn, ck: Customer) -> list[dict[str, Any]]:
        """The WatchTables a subscription may name."""
        return [wt.to_json() for wt in registry.all_tables(conn)]

    return app


def public(sub: dict[str, Any]) -> dict[str, Any]:
    """What a customer sees of a subscription: why deliveries fail as a class, never the raw
    error text, which could describe our internal network to someone probing it."""
    shown = sub.get("LastErrorClass") or ("error" if sub.get("LastError") else None)
    return sub | {"LastError": shown}
