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


def connection_lost(error: BaseException, conn: Any = None) -> bool:
    """Whether a database error means the connection or the server is gone, so that a retry
    on a fresh connection may help, rather than a query that failed on a live connection.

    A cancelled query (statement_timeout on one slow table, pg_cancel_backend) is the query's
    failure: treating it as "database away" would retry it forever and stall everything queued
    behind it, so it is reported where it happened instead.
    """
    if isinstance(error, psycopg.errors.QueryCanceled):
        return False
    if conn is not None and (conn.closed or conn.broken):
        return True
    return isinstance(error, psycopg.OperationalError)
