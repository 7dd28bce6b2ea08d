"""Routes of the Subscriptions API. Every subscription belongs to the caller's CustomerKey.

The routes are served twice: at the root, with ISO 8601 times, and under ``/api/v1`` as Open
Dental serves them, with ``yyyy-MM-dd HH:mm:ss`` times (api/formats.py). Both accept a bearer
API key or Open Dental's ``ODFHIR {DeveloperKey}/{CustomerKey}`` (api/auth.py), checked by the
Guard (api/guard.py) before a body is read.

No ``from __future__ import annotations`` here: FastAPI reads the dependency annotations at
run time, and they refer to names local to create_app.
"""

from collections.abc import Iterator
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from psycopg_pool import ConnectionPool, PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from apievents.api import auth, formats
from apievents.api.guard import CUSTOMER, Guard
from apievents.api.models import (
    AttemptOut,
    ErrorOut,
    RewindIn,
    SubscriptionIn,
    SubscriptionOut,
    WatchTableOut,
)
from apievents.common import inputs, limits, queries, registry, sources, subscriptions
from apievents.common.ssrf import EndpointPolicy

COLUMN_OF = {name: column for column, name in subscriptions.FIELDS.items()}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Bad input; the message names the field."},
    401: {"model": ErrorOut, "description": "No valid API key."},
    404: {"model": ErrorOut, "description": "No such subscription for this customer."},
    413: {"model": ErrorOut, "description": f"A body over {limits.MAX_BODY_BYTES} bytes."},
}
OPEN_DENTAL_PREFIX = "/api/v1"
PUBLIC = frozenset({"/healthz", "/readyz"})  # no key needed (besides the OpenAPI document)


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

    async def authenticate(authorization: str | None) -> tuple[str | None, str]:
        def lookup() -> tuple[str | None, str]:
            with pool.connection() as conn:
                try:
                    return auth.customer(conn, authorization), ""
                except auth.Unauthorized as e:
                    return None, str(e)

        return await run_in_threadpool(lookup)

    docs = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    app.add_middleware(
        Guard,
        authenticate=authenticate,
        public=PUBLIC | frozenset(p for p in docs if p),
        max_body=max_body,
    )
    rules = _Rules(pool, policy, secret_overlap, margin, dns_timeout, max_subscriptions)
    for prefix, fmt in (("", formats.iso), (OPEN_DENTAL_PREFIX, formats.opendental)):
        app.include_router(_routes(rules, fmt), prefix=prefix)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        try:
            with pool.connection(timeout=2) as conn:
                conn.execute(queries.PING)
        except (psycopg.Error, PoolTimeout) as e:  # the database cannot be reached now
            return JSONResponse({"status": "not ready", "error": type(e).__name__}, 503)
        return JSONResponse({"status": "ready"})

    _errors(app)
    return app


def _errors(app: FastAPI) -> None:
    """Every error in one shape: ``{"error": "<Field>: ..."}``."""

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


class _Rules:
    """What the routes of either format share: the pool and the subscription rules."""

    def __init__(
        self,
        pool: ConnectionPool,
        policy: EndpointPolicy,
        secret_overlap: float,
        margin: float,
        dns_timeout: float,
        max_subscriptions: int,
    ) -> None:
        self.pool = pool
        self.policy = policy
        self.secret_overlap = secret_overlap
        self.margin = margin
        self.dns_timeout = dns_timeout
        self.max_subscriptions = max_subscriptions

    def screened(
        self, body: SubscriptionIn, *, creating: bool = False, **extra: str
    ) -> inputs.Screened:
        """The body's fields checked, the endpoint's DNS included, holding no connection."""
        named = body.model_dump(exclude_unset=True, exclude={"CustomerKey"})
        values = {COLUMN_OF[k]: v for k, v in named.items()} | extra
        return inputs.screen(values, self.policy, dns_timeout=self.dns_timeout, creating=creating)


def _routes(rules: _Rules, fmt: formats.Format) -> APIRouter:
    """The Subscriptions routes, answering in ``fmt``."""
    router = APIRouter()
    # Only to document the header in /openapi.json: the Guard checks it before the body is read.
    authorization = APIKeyHeader(
        name="Authorization", auto_error=False, description=f"{auth.SCHEMES}."
    )
    pool = rules.pool

    def connection() -> Iterator[psycopg.Connection[Any]]:
        with pool.connection() as conn:
            yield conn

    Conn = Annotated[psycopg.Connection[Any], Depends(connection)]
    Header = Annotated[str | None, Depends(authorization)]

    def customer(request: Request, header: Header) -> str:
        found = request.scope.get("state", {}).get(CUSTOMER)
        if not isinstance(found, str):  # the Guard sets it on every route that needs a key
            raise ApiError(401, f"send Authorization: {auth.SCHEMES}")
        return found

    Customer = Annotated[str, Depends(customer)]

    def owned(conn: psycopg.Connection[Any], num: int, customer_key: str) -> dict[str, Any]:
        try:
            sub = subscriptions.get(conn, num)
        except subscriptions.NotFound:
            sub = None
        if sub is None or sub["CustomerKey"] != customer_key:
            raise ApiError(404, f"no subscription {num}")  # never reveal other customers'
        return public(sub)

    @router.get("/subscriptions", response_model=list[SubscriptionOut], responses=ERRORS)
    def list_subscriptions(conn: Conn, ck: Customer) -> Any:
        """The caller's subscriptions."""
        return fmt([public(s) for s in subscriptions.list_all(conn, customer_key=ck)])

    @router.post(
        "/subscriptions", status_code=201, response_model=SubscriptionOut, responses=ERRORS
    )
    def create_subscription(body: SubscriptionIn, ck: Customer) -> Any:
        """Create; the answer shows the signing secret this once."""
        values = rules.screened(body, creating=True, customer_key=ck)
        with pool.connection() as conn:
            created = subscriptions.create(
                conn, values, rules.policy, rules.margin, max_per_customer=rules.max_subscriptions
            )
        return fmt(public(created))

    @router.get("/subscriptions/{num}", response_model=SubscriptionOut, responses=ERRORS)
    def get_subscription(num: int, conn: Conn, ck: Customer) -> Any:
        """One subscription."""
        return fmt(owned(conn, num, ck))

    @router.put("/subscriptions/{num}", response_model=SubscriptionOut, responses=ERRORS)
    def update_subscription(num: int, body: SubscriptionIn, ck: Customer) -> Any:
        """Change only the fields named in the body."""
        values = rules.screened(body)
        with pool.connection() as conn:
            owned(conn, num, ck)
            changed = subscriptions.update(
                conn,
                num,
                values,
                rules.policy,
                rules.secret_overlap,
                source=sources.of_customer(conn, ck),
            )
        return fmt(public(changed))

    @router.delete("/subscriptions/{num}", response_model=SubscriptionOut, responses=ERRORS)
    def delete_subscription(num: int, conn: Conn, ck: Customer) -> Any:
        """Delete; answers with what was deleted."""
        owned(conn, num, ck)
        return fmt(public(subscriptions.remove(conn, num)))

    @router.get("/subscriptions/{num}/attempts", response_model=list[AttemptOut], responses=ERRORS)
    def list_attempts(num: int, conn: Conn, ck: Customer) -> Any:
        """Recent delivery attempts, newest first."""
        owned(conn, num, ck)
        return fmt(subscriptions.attempts(conn, num))

    @router.post("/subscriptions/{num}/rewind", response_model=SubscriptionOut, responses=ERRORS)
    def rewind(num: int, body: RewindIn, conn: Conn, ck: Customer) -> Any:
        """Re-send everything changed since To."""
        owned(conn, num, ck)
        return fmt(public(subscriptions.rewind(conn, num, body.To)))

    @router.get("/watchtables", response_model=list[WatchTableOut], responses=ERRORS)
    def watch_tables(conn: Conn, ck: Customer) -> list[dict[str, Any]]:
        """The WatchTables a subscription may name: those of the customer's source."""
        source = sources.of_customer(conn, ck)
        return [
            wt.to_json() | {"WatchTable": wt.event_name}
            for wt in registry.all_tables(conn)
            if wt.source == source
        ]

    return router


def public(sub: dict[str, Any]) -> dict[str, Any]:
    """What a customer sees of a subscription: why deliveries fail as a class, never the raw
    error text, which could describe our internal network to someone probing it."""
    shown = sub.get("LastErrorClass") or ("error" if sub.get("LastError") else None)
    out = sub | {"LastError": shown}
    if isinstance(sub.get("WatchTable"), str):  # a source's Name, as its office knows it
        out["WatchTable"] = sub["WatchTable"].rpartition(".")[2]
    return out
