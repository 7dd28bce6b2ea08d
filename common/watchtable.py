"""What a WatchTable is: a watched table, how its rows are ordered, and their JSON names.

Pure values, no SQL: the registry (common/registry.py) stores and checks them, and the
statements that read a watched table (common/queries_pg.py, common/queries_mysql.py) compose
their identifiers from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

FORMATS = ("iso", "opendental")


@dataclass(frozen=True)
class Derived:
    """A field computed for each row: a value read from another table, or a color.

    ``lookup`` is (schema, table, key column, value column): the value of the row whose key
    equals this row's ``column`` ("" when there is none). Without a lookup, ``column`` holds a
    color as a 32-bit ARGB integer and the field is "R,G,B". ``after`` is the JSON field it
    follows in a row object.
    """

    field: str
    column: str
    after: str
    lookup: tuple[str, str, str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        """The registry's (and the CLI's) form."""
        out: dict[str, Any] = {"field": self.field, "column": self.column, "after": self.after}
        return out | ({"lookup": list(self.lookup)} if self.lookup else {"rgb": True})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Derived:
        """From ``to_json``'s form."""
        lookup = tuple(d["lookup"]) if d.get("lookup") else None
        return cls(d["field"], d["column"], d["after"], lookup)


EnumMap = tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class WatchTable:
    """A watched table: where its rows are, how they are ordered, and their JSON field names.

    ``payload_format`` is "iso" or "opendental"; the opendental rendering names the values of
    ``enums`` columns, and adds ``derived`` fields. ``row_filter`` (column, value) pairs select
    the rows this WatchTable delivers; every other row of the table is not its concern.
    """

    name: str
    table_schema: str
    table_name: str
    key_column: str
    timestamp_column: str
    fields: tuple[tuple[str, str], ...]
    payload_format: str = "iso"
    enums: tuple[tuple[str, EnumMap], ...] = ()
    derived: tuple[Derived, ...] = ()
    row_filter: tuple[tuple[str, int | str], ...] = ()
    source: str = ""  # "" is apievents' own PostgreSQL; else a name in apievents.source

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> WatchTable:
        """Build from a row of ``queries.REGISTRY_COLUMNS``."""
        name, schema, table, key, ts, fields, fmt, enums, derived, row_filter, source = row
        return cls(
            name,
            schema,
            table,
            key,
            ts,
            tuple((c, j) for c, j in fields),
            fmt,
            tuple((c, tuple(sorted((int(v), n) for v, n in m.items()))) for c, m in enums.items()),
            tuple(Derived.from_json(d) for d in derived),
            tuple(row_filter.items()),
            source or "",
        )

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

    @property
    def output_names(self) -> tuple[str, ...]:
        """Field names of the values a page row carries before its paging columns: the
        fields, then the derived fields (``queries_pg.row_source`` selects them in this order)."""
        return self.json_names + tuple(d.field for d in self.derived)

    def to_json(self) -> dict[str, Any]:
        """The registration as printed by the CLI. The format and its parts appear when they
        are not the defaults, so an iso registration prints as it always did."""
        out: dict[str, Any] = {
            "WatchTable": self.name,
            "Table": f"{self.table_schema}.{self.table_name}",
            "KeyColumn": self.key_column,
            "TimestampColumn": self.timestamp_column,
            "Fields": {c: j for c, j in self.fields},
        }
        if self.payload_format != "iso":
            out["Format"] = self.payload_format
        if self.enums:
            out["Enums"] = {c: {str(v): n for v, n in m} for c, m in self.enums}
        if self.derived:
            out["Derived"] = [d.to_json() for d in self.derived]
        if self.row_filter:
            out["Where"] = dict(self.row_filter)
        if self.source:
            out["Source"] = self.source
        return out

    @property
    def event_name(self) -> str:
        """The name subscribers know: a source's WatchTables are registered as
        ``source.Name`` (each office has its own Appointment) and sent as ``Name``."""
        return self.name.rpartition(".")[2]
