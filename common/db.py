"""PostgreSQL plumbing: one-off connections and the services' connection pools."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

# Errors after which a retry on a fresh connection may succeed (server restart, network).
TRANSIENT = (psycopg.OperationalError, psycopg.errors.AdminShutdown)


def connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection; use ``with conn.transaction():`` for atomic work."""
    return psycopg.connect(url, autocommit=True, connect_timeout=10)


def pool(url: str, max_size: int, name: str) -> ConnectionPool:
    """A pool whose connections are checked on checkout, so a database restart heals by itself."""
    return ConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        kwargs={"autocommit": True, "connect_timeout": 10},
        check=ConnectionPool.check_connection,
        timeout=10,
        name=name,
        open=True,
    )
