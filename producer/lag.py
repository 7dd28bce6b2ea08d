"""Subscription lag: the age of the oldest change that some active subscription still owes.

Per WatchTable only the furthest-behind subscription matters, so the cost is one index lookup
per table, however many subscriptions share it. A caught-up subscription contributes 0, so an
idle one is never "late".
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import psycopg

from apievents.common import queries, queries_pg, registry
from apievents.common.db import connection_lost
from apievents.common.logs import error_text

log = logging.getLogger(__name__)


def largest_lag(conn: psycopg.Connection[Any], clock: datetime) -> float:
    """Seconds between ``clock`` and the oldest undelivered change of any active subscription."""
    positions = {
        name: (start, inside)
        for name, start, inside in conn.execute(queries.LAGGING_POSITIONS).fetchall()
    }
    lag = 0.0
    for wt in registry.all_tables(conn):
        if wt.name not in positions or wt.source:  # a source's tables are not in PostgreSQL
            continue
        start, inside = positions[wt.name]
        try:
            with conn.transaction():  # savepoint: a dropped table is reported elsewhere
                row = conn.execute(
                    queries_pg.oldest_change_after(wt, inclusive=inside), {"start": start}
                ).fetchone()
        except psycopg.Error as e:
            if connection_lost(e, conn):
                raise
            log.debug("lag_unreadable", extra={"watch_table": wt.name, "error": error_text(e)})
            continue
        if row and row[0] is not None and row[0].tzinfo is not None:  # naive: see claim._aware
            lag = max(lag, (clock - row[0]).total_seconds())
    return lag
