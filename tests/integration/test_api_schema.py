"""Schemathesis against /openapi.json: generated inputs never cause a 5xx or a schema violation.

The OpenAPI document does not depend on the database, so the app is built at import time with
a pool slot that each test fills with a pool on its own cloned database.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from psycopg_pool import ConnectionPool
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from apievents.api.app import create_app
from apievents.common import api_keys, db
from tests.support.services import LOOPBACK_POLICY, connect

CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]


class PoolSlot:
    def __init__(self) -> None:
        self.pool: ConnectionPool | None = None
        self.headers: dict[str, str] = {}

    def connection(self, **kwargs: Any) -> Any:
        assert self.pool is not None
        return self.pool.connection(**kwargs)


SLOT = PoolSlot()
schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    create_app(SLOT, LOOPBACK_POLICY, 3600),  # type: ignore[arg-type]
)


@pytest.fixture(autouse=True)
def api_database(database_url: str) -> Iterator[None]:
    with connect(database_url) as conn:
        key = api_keys.create(conn, "fuzz-office")["ApiKey"]
        api_keys.create(conn, "other-office")
    SLOT.headers = {"Authorization": f"Bearer {key}"}
    SLOT.pool = db.pool(database_url, 4, "api-fuzz")
    yield
    SLOT.pool.close()
    SLOT.pool = None


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_5xx_and_no_schema_violation(case: Any) -> None:
    case.call_and_validate(headers=SLOT.headers, checks=CHECKS)
