"""The WatchTable registry: the only way a table or column name reaches SQL."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg import sql

from apievents.common import queries

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")


class RegistryError(ValueError):
    """An unknown WatchTable, or a registration that does not fit the database."""


@dataclass(frozen=True)
class WatchTable:
    """A watched table: where its rows are, how they are ordered, and their JSON field names."""

    name: str
    table_schema: str
    table_name: str
    key_column: str
    timestamp_column: str
    fields: tuple[tuple[str, str], ...]

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> WatchTable:
        """Build from a row of ``queries.REGISTRY_COLUMNS``."""
        name, schema, table, key, ts, fields = row
        return cls(name, schema, table, key, ts, tuple((c, j) for c, j in fields))

    @property
    def table_ident(self) -> sql.Identifier:
        """The quoted, schema-qualified table."""
        return sql.Identifier(self.table_schema, self.table_name)

    @property
    def key_ident(self) -> sql.Identifier:
        """The quoted key column."""
        return sql.Identifier(self.key_column)

    @property
    def ts_ident(self) -> sql.Identifier:
        """The quoted change-timestamp column."""
        return sql.Identifier(self.timestamp_column)

    @property
    def json_names(self) -> tuple[str, ...]:
        """Field names of a delivered row object, in column order."""
        return tuple(j for _, j in self.fields)

    def to_json(self) -> dict[str, Any]:
        """The registration as printed by the CLI."""
        return {
            "WatchTable": self.name,
            "Table": f"{self.table_schema}.{self.table_name}",
            "KeyColumn": self.key_column,
            "TimestampColumn": self.timestamp_column,
            "Fields": {c: j for c, j in self.fields},
        }


def get(conn: psycopg.Connection[Any], name: str) -> WatchTable:
    """The registered WatchTable ``name``; RegistryError if there is none."""
    row = conn.execute(queries.REGISTRY_GET, (name,)).fetchone()
    if row is None:
        raise RegistryError(f"unknown WatchTable {name!r}; see `apievents watch-tables list`")
    return WatchTable.from_row(row)


def all_tables(conn: psycopg.Connection[Any]) -> list[WatchTable]:
    """Every registered WatchTable, by name."""
    return [WatchTable.from_row(r) for r in conn.execute(queries.REGISTRY_LIST)]


def add(
    conn: psycopg.Connection[Any],
    name: str,
    table: str,
    key_column: str,
    timestamp_column: str,
    fields: Sequence[tuple[str, str]] = (),
) -> WatchTable:
    """Register a table after checking that it and its columns exist; writes nothing on error."""
    if not _NAME.match(name):
        raise RegistryError(f"--name: {name!r} must be letters, digits and _ (max 63)")
    schema, _, tname = table.rpartition(".")
    schema = schema or "public"
    columns = dict(conn.execute(queries.TABLE_COLUMNS, (schema, tname)).fetchall())
    if not columns:
        raise RegistryError(f"--table: no table {schema}.{tname}")
    for flag, col in (("--key-column", key_column), ("--timestamp-column", timestamp_column)):
        if col not in columns:
            raise RegistryError(f"{flag}: {schema}.{tname} has no column {col!r}")
    if not columns[timestamp_column].startswith("timestamp"):
        raise RegistryError(f"--timestamp-column: {timestamp_column!r} is not a timestamp")
    chosen = list(fields) or [(c, c) for c in columns]
    for col, _ in chosen:
        if col not in columns:
            raise RegistryError(f"--field: {schema}.{tname} has no column {col!r}")
    json_names = [j for _, j in chosen]
    if len(set(json_names)) != len(json_names) or not all(json_names):
        raise RegistryError("--field: JSON field names must be unique and non-empty")
    wt = WatchTable(name, schema, tname, key_column, timestamp_column, tuple(chosen))
    try:
        conn.execute(
            queries.REGISTRY_INSERT,
            (name, schema, tname, key_column, timestamp_column, orjson.dumps(chosen).decode()),
        )
    except psycopg.errors.UniqueViolation:
        raise RegistryError(f"--name: WatchTable {name!r} already exists") from None
    return wt


def remove(conn: psycopg.Connection[Any], name: str) -> WatchTable:
    """Unregister a WatchTable that no subscription uses."""
    wt = get(conn, name)
    (in_use,) = conn.execute(queries.REGISTRY_IN_USE, (name,)).fetchone() or (0,)
    if in_use:
        raise RegistryError(f"WatchTable {name!r} is used by {in_use} subscription(s)")
    conn.execute(queries.REGISTRY_DELETE, (name,))
    return wt
