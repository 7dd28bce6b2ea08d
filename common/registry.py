"""The WatchTable registry: the only way a table or column name reaches SQL."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg

from apievents.common import queries
from apievents.common.watchtable import FORMATS as FORMATS
from apievents.common.watchtable import Derived as Derived
from apievents.common.watchtable import EnumMap as EnumMap
from apievents.common.watchtable import WatchTable as WatchTable

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")


class RegistryError(ValueError):
    """An unknown WatchTable, or a registration that does not fit the database."""


def get(conn: psycopg.Connection[Any], name: str) -> WatchTable:
    """The registered WatchTable ``name``; RegistryError if there is none."""
    row = conn.execute(queries.REGISTRY_GET, (name,)).fetchone()
    if row is None:
        raise RegistryError(f"unknown WatchTable {name!r}; see `apievents watch-tables list`")
    return WatchTable.from_row(row)


def all_tables(conn: psycopg.Connection[Any]) -> list[WatchTable]:
    """Every registered WatchTable, by name."""
    return [WatchTable.from_row(r) for r in conn.execute(queries.REGISTRY_LIST)]


# Schemas whose tables must never be watched: apievents' own state (signing secrets, keys) and
# the catalogs. A subscription to one would hand any API key every customer's secrets.
SYSTEM_SCHEMAS = frozenset({"apievents", "pg_catalog", "information_schema"})
# A stamp must be as precise as now(): a column that rounds it can round a transaction's stamp
# to before its start, past a window end that was safe.
TIMESTAMPTZ = frozenset({"timestamp with time zone", "timestamp(6) with time zone"})


@dataclass(frozen=True)
class _Column:
    type: str
    not_null: bool
    number: int


def add(
    conn: psycopg.Connection[Any],
    name: str,
    table: str,
    key_column: str,
    timestamp_column: str,
    fields: Sequence[tuple[str, str]] = (),
    *,
    stamped_by_application: bool = False,
    payload_format: str = "iso",
    enums: Sequence[tuple[str, EnumMap]] = (),
    derived: Sequence[Derived] = (),
    row_filter: Sequence[tuple[str, int | str]] = (),
) -> WatchTable:
    """Register a table after checking that its changes can be windowed without loss.

    The table must be an ordinary or partitioned table outside the system schemas; the key a
    unique, NOT NULL column; the timestamp ``timestamptz`` with six fractional digits, set by
    a BEFORE INSERT and UPDATE row trigger (unless ``stamped_by_application``). Enum columns
    must be delivered fields, and derived fields must read existing columns. Nothing is
    written on error.
    """
    if not _NAME.match(name):
        raise RegistryError(f"--name: {name!r} must be letters, digits and _ (max 63)")
    if payload_format not in FORMATS:
        raise RegistryError(f"--format: must be one of {', '.join(FORMATS)}")
    schema, tname = split_table(table)
    oid, columns = _relation(conn, schema, tname)
    where = f"{schema}.{tname}"
    for flag, col in (("--key-column", key_column), ("--timestamp-column", timestamp_column)):
        if col not in columns:
            raise RegistryError(f"{flag}: {where} has no column {col!r}")
    _check_key(conn, oid, where, key_column, columns[key_column])
    if columns[timestamp_column].type not in TIMESTAMPTZ:
        raise RegistryError(
            f"--timestamp-column: {timestamp_column!r} is {columns[timestamp_column].type}; "
            "it must be timestamp with time zone with 6 fractional digits"
        )
    if not stamped_by_application:
        _check_trigger(conn, oid, where, timestamp_column)
    chosen = list(fields) or [(c, c) for c in columns]
    for col, _ in chosen:
        if col not in columns:
            raise RegistryError(f"--field: {where} has no column {col!r}")
    _check_rendering(conn, where, columns, chosen, enums, derived, row_filter)
    wt = WatchTable(
        name,
        schema,
        tname,
        key_column,
        timestamp_column,
        tuple(chosen),
        payload_format,
        tuple(enums),
        tuple(derived),
        tuple(row_filter),
    )
    insert(conn, wt)
    return wt


def insert(conn: psycopg.Connection[Any], wt: WatchTable) -> None:
    """Store a WatchTable whose table was checked (by ``add``, or for a source by its migrate)."""
    try:
        conn.execute(
            queries.REGISTRY_INSERT,
            (
                wt.name,
                wt.table_schema,
                wt.table_name,
                wt.key_column,
                wt.timestamp_column,
                orjson.dumps(list(wt.fields)).decode(),
                wt.payload_format,
                orjson.dumps({c: {str(v): n for v, n in m} for c, m in wt.enums}).decode(),
                orjson.dumps([d.to_json() for d in wt.derived]).decode(),
                orjson.dumps(dict(wt.row_filter)).decode(),
                wt.source or None,
            ),
        )
    except psycopg.errors.UniqueViolation:
        raise RegistryError(f"--name: WatchTable {wt.name!r} already exists") from None


def resolve(conn: psycopg.Connection[Any], name: str, source: str = "") -> WatchTable:
    """The WatchTable a subscription names: ``name`` itself, or the source's ``source.name``."""
    if source and "." not in name:
        return get(conn, f"{source}.{name}")
    return get(conn, name)


def split_table(table: str) -> tuple[str, str]:
    """(schema, table) of an optionally schema-qualified name, refusing the system schemas."""
    schema, _, tname = table.rpartition(".")
    schema = schema or "public"
    if schema in SYSTEM_SCHEMAS or schema.startswith("pg_"):
        raise RegistryError(f"--table: {schema}.{tname} is in a system schema")
    return schema, tname


def columns_of(conn: psycopg.Connection[Any], schema: str, table: str) -> dict[str, str] | None:
    """The columns of a table and their types, or None if there is no such table."""
    try:
        _, columns = _relation(conn, schema, table)
    except RegistryError:
        return None
    return {c: col.type for c, col in columns.items()}


_INTEGERS = frozenset({"smallint", "integer", "bigint"})


def _check_rendering(
    conn: psycopg.Connection[Any],
    where: str,
    columns: dict[str, _Column],
    chosen: Sequence[tuple[str, str]],
    enums: Sequence[tuple[str, EnumMap]],
    derived: Sequence[Derived],
    row_filter: Sequence[tuple[str, int | str]],
) -> None:
    """Enum maps, derived fields and the row filter must fit the table's columns."""
    delivered = {c for c, _ in chosen}
    for col, mapping in enums:
        if col not in delivered:
            raise RegistryError(f"--enum: {col!r} is not a delivered column of {where}")
        if columns[col].type not in _INTEGERS or not mapping:
            raise RegistryError(f"--enum: {col!r} must be an integer column with named values")
    for d in derived:
        if d.column not in columns:
            raise RegistryError(f"derived {d.field}: {where} has no column {d.column!r}")
        if d.lookup is None and columns[d.column].type not in _INTEGERS:
            raise RegistryError(f"derived {d.field}: {d.column!r} must hold an ARGB integer")
        if d.lookup is not None:
            found = columns_of(conn, d.lookup[0], d.lookup[1]) or {}
            if not {d.lookup[2], d.lookup[3]} <= set(found):
                raise RegistryError(
                    f"derived {d.field}: no table {d.lookup[0]}.{d.lookup[1]} with columns "
                    f"{d.lookup[2]!r} and {d.lookup[3]!r}"
                )
    for col, value in row_filter:
        if col not in columns:
            raise RegistryError(f"--where: {where} has no column {col!r}")
        numeric = columns[col].type in _INTEGERS
        if isinstance(value, bool) or not isinstance(value, int if numeric else str):
            kind = "a whole number" if numeric else "text"
            raise RegistryError(f"--where: {col} is {columns[col].type}; give {kind}")
    names = [j for _, j in chosen] + [d.field for d in derived]
    if len(set(names)) != len(names) or not all(names):
        raise RegistryError("--field: JSON field names must be unique and non-empty")


def _relation(
    conn: psycopg.Connection[Any], schema: str, tname: str
) -> tuple[int, dict[str, _Column]]:
    found = conn.execute(queries.RELATION, (schema, tname)).fetchone()
    if found is None:
        raise RegistryError(f"--table: no table {schema}.{tname}")
    oid, kind = found
    if kind not in ("r", "p"):  # views, foreign tables and the rest cannot be watched safely
        raise RegistryError(f"--table: {schema}.{tname} is not an ordinary or partitioned table")
    rows = conn.execute(queries.TABLE_COLUMNS, (oid,)).fetchall()
    return oid, {c: _Column(type_, nn, num) for c, type_, nn, num in rows}


def _check_key(
    conn: psycopg.Connection[Any], oid: int, where: str, key: str, column: _Column
) -> None:
    """Rows are paged by (timestamp, key): two rows with one key could be skipped or repeated."""
    row = conn.execute(queries.KEY_IS_UNIQUE, (oid, column.number)).fetchone()
    if not (column.not_null and row and row[0]):
        raise RegistryError(
            f"--key-column: {key!r} of {where} must be NOT NULL with a unique index of its own"
        )


def _check_trigger(conn: psycopg.Connection[Any], oid: int, where: str, column: str) -> None:
    """A change the trigger does not stamp keeps its old timestamp and is never sent."""
    events = 0
    for kinds, text in conn.execute(queries.ROW_TRIGGERS, (oid,)).fetchall():
        if re.search(rf"\b{re.escape(column)}\b", text or "", re.IGNORECASE):
            events |= kinds
    if events != 20:  # 4 (insert) | 16 (update)
        raise RegistryError(
            f"--timestamp-column: no BEFORE INSERT and UPDATE row trigger of {where} sets "
            f"{column!r}; add one (see README), or pass --stamped-by-application"
        )


def remove(conn: psycopg.Connection[Any], name: str) -> WatchTable:
    """Unregister a WatchTable that no subscription uses."""
    wt = get(conn, name)
    (in_use,) = conn.execute(queries.REGISTRY_IN_USE, (name,)).fetchone() or (0,)
    if in_use:
        raise RegistryError(f"WatchTable {name!r} is used by {in_use} subscription(s)")
    conn.execute(queries.REGISTRY_DELETE, (name,))
    return wt
