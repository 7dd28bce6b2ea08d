"""Who is calling: ``Authorization: Bearer <ApiKey>`` or Open Dental's
``Authorization: ODFHIR <DeveloperKey>/<CustomerKey>``; either names one CustomerKey."""

from __future__ import annotations

from typing import Any

import psycopg

from apievents.common import api_keys

SCHEMES = "Bearer <ApiKey>, or ODFHIR <DeveloperKey>/<CustomerKey> (Open Dental's)"


class Unauthorized(Exception):
    """No valid credential; the message says what to send."""


def customer(conn: psycopg.Connection[Any], authorization: str | None) -> str:
    """The CustomerKey the credential acts for; Unauthorized if there is none."""
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        found = api_keys.customer_of(conn, credentials)
    elif scheme.lower() == "odfhir" and "/" in credentials:
        developer_key, _, customer_key = credentials.partition("/")
        found = api_keys.customer_of(conn, api_keys.odfhir(developer_key, customer_key))
    else:
        raise Unauthorized(f"send Authorization: {SCHEMES}")
    if found is None:
        raise Unauthorized("unknown or revoked key")
    return found
