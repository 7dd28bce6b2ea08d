"""The statements apievents sends to a MariaDB/MySQL source, in one place.

Values are always parameters (``%s``, escaped by the driver). Identifiers of watched tables
come only from the WatchTable registry and are quoted by ``quote``.
"""

from __future__ import annotations

import re

from apievents.common.watchtable import WatchTable

# Every session reads and compares times in UTC: DateTStamp is a MySQL timestamp (stored as
# UTC, shown in the session's zone), and so are NOW() and innodb_trx.trx_started.
SESSION = "SET time_zone = '+00:00'"
# Non-empty once the session is encrypted.
TLS_CIPHER = "SHOW SESSION STATUS LIKE 'Ssl_cipher'"
PING = "SELECT 1"

# The safe window end (common/mysql_horizon.py) reads, in this order: the server clock with
# the statements running now, then the open InnoDB transactions, a row per session each (the
# reading remembers them across readings: common/trx_origins.py). A statement stamps its rows
# with its own start time (NOW() at its start, whole seconds in DateTStamp), so the oldest
# running statement bounds what can still be written; a transaction that is between
# statements holds rows stamped at or after the start of the statement that opened it.
# Reading the statements first means a transaction's statement that ends between the two
# reads is still seen in innodb_trx. Sleeping sessions run nothing (their open transactions
# are in innodb_trx); daemons write no rows of ours. The join keeps the clock's row when no
# other session runs anything. An INSERT DELAYED (MyISAM, Aria) returns at once and leaves its
# rows, stamped already, to a 'Delayed insert' handler thread that writes them later and shows
# no age: while one exists, its stamps are unknown (the end stays at the frontier).
# Columns: clock, thread id, statement start, whether it is a delayed-insert handler.
_STATEMENTS = """
SELECT NOW(6), p.ID, NOW(6) - INTERVAL {elapsed} MICROSECOND, p.COMMAND = 'Delayed insert'
FROM (SELECT 1) AS clock
LEFT JOIN information_schema.PROCESSLIST AS p
  ON p.ID <> CONNECTION_ID() AND p.COMMAND NOT IN ('Sleep', 'Daemon', 'Binlog Dump')
"""
# MariaDB and Percona Server show the elapsed time in milliseconds (TIME_MS); Oracle MySQL only
# in whole seconds (TIME, truncated), so there a statement may have started up to a second
# before NOW() - TIME: one more second is taken.
STATEMENTS_IN_FLIGHT = _STATEMENTS.format(elapsed="CAST(p.TIME_MS * 1000 AS SIGNED)")
STATEMENTS_IN_FLIGHT_SECONDS = _STATEMENTS.format(elapsed="(p.TIME + 1) * 1000000")
HAS_TIME_MS = """
SELECT COUNT(*) FROM information_schema.COLUMNS
WHERE TABLE_SCHEMA = 'information_schema' AND TABLE_NAME = 'PROCESSLIST'
  AND COLUMN_NAME = 'TIME_MS'
"""
# INNODB_TRX is a cache that InnoDB refreshes only when nobody read it for 0.1 s, so frequent
# readers (this one included) can see an old copy. The reading session therefore opens a
# transaction of its own first and asks for it back with a token in the statement's text: a
# copy that shows this very statement was taken after it started, and so after the statements
# above were read.
OPEN_CANARY = "START TRANSACTION WITH CONSISTENT SNAPSHOT"
#
# trx_started is the server's OS local time (InnoDB formats it with localtime), whatever the
# session's zone: it is converted from 'SYSTEM' to UTC. In the hour a fall-back repeats, a local
# time names two instants; the earlier one is taken, so the bound never moves later.
# Parameter: LIKE pattern of the token. Columns: thread id, start (UTC), this session's own
# row, this session's own row showing the token.
TRANSACTIONS_IN_FLIGHT = """
SELECT thread,
       CASE WHEN CONVERT_TZ(utc - INTERVAL 1 HOUR, '+00:00', 'SYSTEM') = local_start
            THEN utc - INTERVAL 1 HOUR ELSE utc END,
       own, own AND query LIKE %s
FROM (SELECT trx_mysql_thread_id AS thread, trx_query AS query, trx_started AS local_start,
             CONVERT_TZ(trx_started, 'SYSTEM', '+00:00') AS utc,
             trx_mysql_thread_id = CONNECTION_ID() AS own
      FROM information_schema.INNODB_TRX) AS t
"""
CLOSE_CANARY = "COMMIT"
# Prepared XA transactions: they show in innodb_trx while the server runs, but one recovered
# after a restart may carry rows stamped long before its trx_started. While any is listed the
# end stays at the frontier, as for PostgreSQL's prepared transactions.
XA_PREPARED = "XA RECOVER"
# Without PROCESS a session sees only its own threads and transactions: blind.
HAS_PROCESS = """
SELECT COUNT(*) FROM information_schema.USER_PRIVILEGES
WHERE PRIVILEGE_TYPE = 'PROCESS'
"""

_IDENT = re.compile(r"^[A-Za-z0-9_$]{1,64}$")


def quote(name: str) -> str:
    """A MySQL identifier in backticks. Only registry-validated names reach it; anything else
    (a backtick, a quote, a dot, a space, an empty name) is refused, never escaped."""
    if not _IDENT.match(name):
        raise ValueError(f"not a plain MySQL identifier: {name!r}")
    return f"`{name}`"


def _table(wt: WatchTable) -> str:
    return f"{quote(wt.table_schema)}.{quote(wt.table_name)}"


def _where(wt: WatchTable) -> tuple[str, list[object]]:
    """The registry's row filter (AppointmentDeleted: Deleted rows of histappointment)."""
    if not wt.row_filter:
        return "TRUE", []
    return " AND ".join(f"{quote(c)} = %s" for c, _ in wt.row_filter), [v for _, v in wt.row_filter]


def _shown(wt: WatchTable, column: str) -> str:
    """A delivered value. The stamp (a MySQL ``timestamp``) is read in this UTC session, so it
    is shown in the server's own zone, as an Open Dental client's session sees it; other times
    are ``datetime`` wall times and come as stored."""
    if column == wt.timestamp_column:
        return f"CONVERT_TZ({quote(column)}, '+00:00', @@global.time_zone)"
    return quote(column)


def select_list(wt: WatchTable) -> str:
    """The delivered values (fields, then derived fields), then the timestamp and the key:
    the same row shape as queries_pg.row_source, so worker/rows.py encodes either."""
    values = [_shown(wt, c) for c, _ in wt.fields]
    for d in wt.derived:  # only colors: a source's lookups are not registered (see migrate)
        c = quote(d.column)
        values.append(f"CONCAT_WS(',', ({c} >> 16) & 255, ({c} >> 8) & 255, {c} & 255)")
    return ", ".join([*values, quote(wt.timestamp_column), quote(wt.key_column)])


def newest_change(wt: WatchTable) -> tuple[str, list[object]]:
    """The newest timestamp of a watched table: one index lookup."""
    where, args = _where(wt)
    return f"SELECT MAX({quote(wt.timestamp_column)}) FROM {_table(wt)} WHERE {where}", args


def window_page(wt: WatchTable, *, first: bool) -> tuple[str, list[object]]:
    """One keyset page in (timestamp, key) order; never OFFSET. Parameters after the filter's:
    start (first page) or after_ts, after_ts, after_key (later pages); then end, limit.

    The keyset condition is spelled out: MariaDB does not use the (DateTStamp) index for the
    row comparison ``(ts, key) > (a, b)``, but does for ``ts > a OR (ts = a AND key > b)``.
    """
    where, args = _where(wt)
    ts, key = quote(wt.timestamp_column), quote(wt.key_column)
    after = f"{ts} > %s" if first else f"({ts} > %s OR ({ts} = %s AND {key} > %s))"
    text = (
        f"SELECT {select_list(wt)} FROM {_table(wt)} WHERE {where} AND {after} "
        f"AND {ts} <= %s ORDER BY {ts}, {key} LIMIT %s"
    )
    return text, args


# Registration checks (the table exists, its key is the primary key, its stamp is a
# timestamp that the server sets on insert and update).
TABLE_COLUMNS = """
SELECT COLUMN_NAME, DATA_TYPE, COLUMN_DEFAULT, EXTRA, COLUMN_KEY
FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s
ORDER BY ORDINAL_POSITION
"""
# Engines whose writes the reading sees: InnoDB's open transactions are in INNODB_TRX, and a
# MyISAM or Aria row is visible as its statement writes it. Any other engine's (MyRocks,
# FEDERATED, CONNECT, Spider) open transactions or remote writes would be invisible.
WATCHABLE_ENGINES = frozenset({"InnoDB", "MyISAM", "Aria"})
TABLE_ENGINE = """
SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s
"""
