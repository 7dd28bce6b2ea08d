"""Schema migrations: numbered SQL files in common/schema, applied once each, in order."""

from __future__ import annotations

from importlib import resources
from typing import Any

import psycopg

_SCHEMA = resources.files("apievents.common") / "schema"
_LOCK = 0x61706965  # advisory lock id ("apie"): concurrent `migrate` runs take turns
_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS apievents;
CREATE TABLE IF NOT EXISTS apievents.schema_migration (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


def _scripts() -> list[tuple[int, str, str]]:
    folder = _SCHEMA
    found = []
    for entry in folder.iterdir():
        stem = entry.name.removesuffix(".sql")
        if entry.name.endswith(".sql") and stem[:4].isdigit():
            found.append((int(stem[:4]), entry.name, entry.read_text()))
    return sorted(found)


def migrate(conn: psycopg.Connection[Any], sample_schema: bool = False) -> list[str]:
    """Apply pending migrations (and the sample schema); returns the names applied."""
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        conn.execute(_BOOTSTRAP)
        done = {v for (v,) in conn.execute("SELECT version FROM apievents.schema_migration")}
        for version, name, text in _scripts():
            if version not in done:
                conn.execute(text.encode())
                conn.execute(
                    "INSERT INTO apievents.schema_migration (version, name) VALUES (%s, %s)",
                    (version, name),
                )
                applied.append(name)
        if sample_schema:
            conn.execute((_SCHEMA / "sample.sql").read_bytes())
            applied.append("sample.sql")
    return applied
