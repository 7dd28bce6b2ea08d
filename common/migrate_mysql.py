"""``migrate --opendental-schema --source NAME``: Open Dental's tables in a MariaDB/MySQL
source, and their WatchTables (``NAME.Appointment``, ``NAME.Patient``,
``NAME.AppointmentDeleted``) in apievents' registry.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any

import psycopg

from apievents.common import mysql, opendental, queries_mysql, registry, sources
from apievents.common.watchtable import WatchTable

_SQL = resources.files("apievents.common") / "schema" / "opendental_mysql.sql"
# Open Dental's bool columns are tinyint in MySQL: sent as "true"/"false", as Open Dental does.
BOOLEANS = frozenset(
    {"timelocked", "isnewpatient", "ishygiene", "ismirrored", "premed", "plannedisdone"}
)
_BOOL_NAMES = ((0, "false"), (1, "true"))


class MySQLMigrateError(ValueError):
    """The source cannot take the schema; apievents' registry was not changed."""


def statements() -> list[str]:
    """The schema's statements: each ends with a line that ends with ";"."""
    found: list[str] = []
    current: list[str] = []
    for line in _SQL.read_text().splitlines():
        if not current and (line.startswith("--") or not line.strip()):
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            found.append("\n".join(current).rstrip().rstrip(";"))
            current = []
    return [s for s in found if s.strip()]


def migrate(conn: psycopg.Connection[Any], source_name: str, timeout: float) -> list[str]:
    """Create the tables in the source (idempotent), then register what is not registered."""
    source = sources.get(conn, source_name)
    columns = asyncio.run(_apply(source, timeout))
    applied = [f"opendental_mysql.sql on source {source_name}"]
    existing = {wt.name for wt in registry.all_tables(conn)}
    with conn.transaction():
        for name, table, key, row_filter in opendental.WATCH_TABLES:
            wt = watch_table(source, name, table, key, row_filter, columns[table])
            if wt.name not in existing:
                registry.insert(conn, wt)
                applied.append(f"WatchTable {wt.name}")
    return applied


async def _apply(source: sources.Source, timeout: float) -> dict[str, list[str]]:
    pool = mysql.Pool(source.name, source.address, 1, timeout)
    try:
        for statement in statements():
            await pool.fetch(statement)
        found: dict[str, list[str]] = {}
        for _, table, _, _ in opendental.WATCH_TABLES:
            where = (source.address.database, table)
            ((engine,),) = await pool.fetch(queries_mysql.TABLE_ENGINE, where)
            if engine not in queries_mysql.WATCHABLE_ENGINES:
                raise MySQLMigrateError(
                    f"--source: {source.name}: table {table} uses the {engine} engine; only "
                    "InnoDB, MyISAM and Aria tables can be watched"
                )
            rows = await pool.fetch(queries_mysql.TABLE_COLUMNS, where)
            found[table] = [str(r[0]) for r in rows]
        return found
    except mysql.Error as e:
        raise MySQLMigrateError(f"--source: {source.name}: {e.args[-1]}") from None
    finally:
        pool.close()


def watch_table(
    source: sources.Source,
    name: str,
    table: str,
    key: str,
    row_filter: tuple[tuple[str, int], ...],
    columns: list[str],
) -> WatchTable:
    """The WatchTable of one Open Dental table in the source, in the opendental format:
    Open Dental's fields, its enum names, bools as "true"/"false", colors as "R,G,B" (the
    name lookups need Open Dental's definition tables, which a source may not have)."""
    shape = opendental.SHAPES[table]
    by_lower = {c.lower(): c for c in columns}
    fields = tuple((by_lower[f.lower()], f) for f in shape.fields if f.lower() in by_lower)
    enums = [
        (by_lower[c], tuple(enumerate(opendental.ENUMS[e])))
        for c, e in shape.enums.items()
        if c in by_lower
    ]
    enums += [(by_lower[c], _BOOL_NAMES) for c in sorted(BOOLEANS) if c in by_lower]
    delivered = {c for c, _ in fields}
    derived = tuple(
        registry.Derived(field, by_lower[column], after)
        for field, column, after, lookup, _, _ in shape.derived
        if lookup is None and column in by_lower
    )
    return WatchTable(
        f"{source.name}.{name}",
        source.address.database,
        table,
        by_lower[key],
        by_lower["datetstamp"],
        fields,
        "opendental",
        tuple((c, m) for c, m in enums if c in delivered),
        derived,
        tuple((by_lower[c], v) for c, v in row_filter),
        source.name,
    )
