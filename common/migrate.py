"""Schema migrations: numbered SQL files in common/schema, applied once each, in order."""

from __future__ import annotations

from importlib import resources
from typing import Any

import psycopg

from apievents.common import opendental, registry

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


class MigrateError(ValueError):
    """The database cannot take what was asked for; nothing was changed."""


def migrate(
    conn: psycopg.Connection[Any], sample_schema: bool = False, opendental_schema: bool = False
) -> list[str]:
    """Apply pending migrations, and the sample or the Open Dental schema; returns the names
    applied (and the WatchTables the Open Dental schema registered)."""
    if sample_schema and opendental_schema:
        raise MigrateError(
            "--opendental-schema: not with --sample-schema; they are alternatives for one database"
        )
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
            _refuse_other(conn, "--sample-schema", "opendental")
            conn.execute((_SCHEMA / "sample.sql").read_bytes())
            applied.append("sample.sql")
        if opendental_schema:
            _refuse_other(conn, "--opendental-schema", "iso")
            conn.execute((_SCHEMA / "opendental.sql").read_bytes())
            applied.append("opendental.sql")
            applied += [f"WatchTable {name}" for name in opendental.register(conn)]
    return applied


def _refuse_other(conn: psycopg.Connection[Any], flag: str, other_format: str) -> None:
    """The sample and the Open Dental schema share table and WatchTable names: a database
    holds one or the other."""
    try:
        registered = registry.get(conn, "Appointment")
    except registry.RegistryError:
        return
    if registered.payload_format == other_format:
        other = "--opendental-schema" if other_format == "opendental" else "--sample-schema"
        raise MigrateError(
            f"{flag}: this database has the schema of {other}; the two are alternatives "
            "for one database"
        )
