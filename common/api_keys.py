"""API keys: random bearer tokens, stored only as SHA-256 digests, each bound to a CustomerKey."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import psycopg

from apievents.common import limits, queries

PREFIX = "apiev_"


def digest(api_key: str) -> str:
    """What is stored and looked up; the key itself is never stored."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def create(conn: psycopg.Connection[Any], customer_key: str) -> dict[str, Any]:
    """A new key for ``customer_key``; the key is returned this once."""
    # Every POST of the customer's subscriptions carries it as the Authorization header.
    problem = limits.header_text_problem(customer_key, limits.MAX_CUSTOMER_KEY)
    if not customer_key or problem:
        raise ValueError(f"--customer-key: {problem or 'must not be empty'}")
    api_key = PREFIX + secrets.token_urlsafe(32)
    conn.execute(queries.API_KEY_INSERT, (customer_key, digest(api_key)))
    return {"CustomerKey": customer_key, "ApiKey": api_key}


def odfhir(developer_key: str, customer_key: str) -> str:
    """The credential of an Open Dental key pair: what ``Authorization: ODFHIR DK/CK`` carries.

    A pair is stored like an API key, as the SHA-256 digest of this text, so a leaked table
    reveals neither key.
    """
    return f"ODFHIR {developer_key}/{customer_key}"


def create_pair(
    conn: psycopg.Connection[Any], customer_key: str, developer_key: str
) -> dict[str, Any]:
    """Register an Open Dental DeveloperKey/CustomerKey pair, which then acts for
    ``customer_key``."""
    _check("--customer-key", customer_key)
    _check("--developer-key", developer_key)
    if "/" in developer_key:
        raise ValueError("--developer-key: must not contain '/' (it separates the two keys)")
    try:
        conn.execute(
            queries.API_KEY_INSERT, (customer_key, digest(odfhir(developer_key, customer_key)))
        )
    except psycopg.errors.UniqueViolation:
        raise ValueError("--developer-key: this pair is already registered") from None
    return {"CustomerKey": customer_key, "DeveloperKey": developer_key}


def _check(flag: str, key: str) -> None:
    if not key or len(key) > 255 or any(ord(c) <= 32 for c in key):
        raise ValueError(f"{flag}: must be 1 to 255 printable characters, without spaces")


def customer_of(conn: psycopg.Connection[Any], api_key: str) -> str | None:
    """The CustomerKey of a live key, or None."""
    row = conn.execute(queries.API_KEY_LOOKUP, (digest(api_key),)).fetchone()
    return None if row is None else str(row[0])


def revoke(
    conn: psycopg.Connection[Any], api_key: str | None = None, customer_key: str | None = None
) -> list[dict[str, Any]]:
    """Revoke one key, or every key of a customer; returns what was revoked."""
    rows = conn.execute(
        queries.API_KEY_REVOKE,
        {"hash": digest(api_key) if api_key else None, "customer_key": customer_key},
    ).fetchall()
    return [{"ApiKeyNum": num, "CustomerKey": ck} for num, ck in rows]


def list_all(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every key's number, customer and dates; never the key."""
    return [
        {
            "ApiKeyNum": num,
            "CustomerKey": ck,
            "Created": created.isoformat(),
            "Revoked": revoked.isoformat() if revoked else None,
        }
        for num, ck, created, revoked in conn.execute(queries.API_KEY_LIST).fetchall()
    ]
