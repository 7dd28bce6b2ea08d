"""The statements that read a watched PostgreSQL table, composed from its registry entry.

Identifiers come only from the WatchTable registry and are quoted with
``psycopg.sql.Identifier``; values are always parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from apievents.common.watchtable import Derived, WatchTable


def newest_change(wt: WatchTable) -> sql.Composed:
    """The newest timestamp in a watched table: one index lookup, shared by its subscriptions."""
    src = row_source(wt)
    return sql.SQL("SELECT max({ts}) FROM {table} WHERE {where}").format(
        ts=wt.ts_ident, table=src.table, where=src.where
    )


def oldest_change_after(wt: WatchTable, *, inclusive: bool) -> sql.Composed:
    """The oldest change after a position: one index lookup. Parameter: start."""
    op = sql.SQL(">=" if inclusive else ">")
    src = row_source(wt)
    return sql.SQL("SELECT min({ts}) FROM {table} WHERE {where} AND {ts} {op} %(start)s").format(
        ts=wt.ts_ident, table=src.table, where=src.where, op=op
    )


@dataclass(frozen=True)
class RowSource:
    """A WatchTable's rows as SQL pieces, for any read of what it delivers.

    - ``select``: the delivered values (the registry's fields in order, then its derived
      fields), followed by the timestamp and the key. ``worker.rows.encode(wt, rows)`` takes
      rows of exactly this shape; ``worker.rows.position`` reads the last two.
    - ``table``: the quoted table, not aliased: derived fields refer to its columns through it,
      so a read must name it as ``FROM {table}`` with no alias.
    - ``where``: the registry's row filter (AppointmentDeleted: histappointment's Deleted rows),
      or TRUE. AND it into every read of the table, including "is anything new?".

    A page is ``SELECT {select} FROM {table} WHERE {where} AND <window> ORDER BY ts, key
    LIMIT n`` (window_page); a read shared by several subscriptions of one WatchTable can use
    the same pieces with a wider window and split the rows by timestamp.
    """

    select: sql.Composed
    table: sql.Identifier
    where: sql.Composable


def row_source(wt: WatchTable) -> RowSource:
    """The one place that composes what a WatchTable's page rows hold (see RowSource)."""
    values: list[sql.Composable] = [sql.Identifier(c) for c, _ in wt.fields]
    values += [_derived(wt, d) for d in wt.derived]
    select = sql.SQL(", ").join([*values, wt.ts_ident, wt.key_ident])
    # The filter's values are quoted literals, not parameters: every caller then runs the same
    # parameters as before, and the planner can match a partial index on the filter
    # (histappointment_deleted) when it plans the statement.
    conditions = [
        sql.SQL("{} = {}").format(sql.Identifier(c), sql.Literal(v)) for c, v in wt.row_filter
    ]
    where = sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("TRUE")
    return RowSource(select, wt.table_ident, where)


def _derived(wt: WatchTable, d: Derived) -> sql.Composed:
    """A derived field: a name read from another table ("" if none), or an ARGB int as R,G,B."""
    column = sql.Identifier(wt.table_schema, wt.table_name, d.column)
    if d.lookup is None:
        return sql.SQL("concat_ws(',', ({c} >> 16) & 255, ({c} >> 8) & 255, {c} & 255)").format(
            c=column
        )
    schema, table, key, value = d.lookup
    return sql.SQL(
        "coalesce((SELECT {value}::text FROM {table} WHERE {key} = {column} LIMIT 1), '')"
    ).format(
        value=sql.Identifier(schema, table, value),
        table=sql.Identifier(schema, table),
        key=sql.Identifier(schema, table, key),
        column=column,
    )


def window_page(wt: WatchTable, *, first: bool) -> sql.Composed:
    """One keyset page of a window in (timestamp, key) order; never OFFSET.

    The first page takes ``ts > start``; later pages continue after the last (ts, key) sent.
    Parameters: start or (after_ts, after_key), end, limit. Rows have row_source's shape.
    """
    src = row_source(wt)
    after = (
        sql.SQL("{ts} > %(start)s")
        if first
        else sql.SQL("({ts}, {key}) > (%(after_ts)s, %(after_key)s)")
    ).format(ts=wt.ts_ident, key=wt.key_ident)
    return sql.SQL(
        "SELECT {select} FROM {table} WHERE {where} AND {after} AND {ts} <= %(end)s "
        "ORDER BY {ts}, {key} LIMIT %(limit)s"
    ).format(
        select=src.select,
        table=src.table,
        where=src.where,
        after=after,
        ts=wt.ts_ident,
        key=wt.key_ident,
    )
