"""Every SQL statement the service issues, in one place.

Values are always parameters. Identifiers of watched tables come only from the WatchTable
registry and are quoted with ``psycopg.sql.Identifier``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg import sql

if TYPE_CHECKING:
    from apievents.common.registry import WatchTable

PING = "SELECT 1"

# -- WatchTable registry ------------------------------------------------------------------------

REGISTRY_COLUMNS = "name, table_schema, table_name, key_column, timestamp_column, fields"
REGISTRY_GET = f"SELECT {REGISTRY_COLUMNS} FROM apievents.watch_table WHERE name = %s"
REGISTRY_LIST = f"SELECT {REGISTRY_COLUMNS} FROM apievents.watch_table ORDER BY name"
REGISTRY_INSERT = """
INSERT INTO apievents.watch_table
    (name, table_schema, table_name, key_column, timestamp_column, fields)
VALUES (%s, %s, %s, %s, %s, %s)
"""
REGISTRY_DELETE = "DELETE FROM apievents.watch_table WHERE name = %s"
REGISTRY_IN_USE = "SELECT count(*) FROM apievents.subscription WHERE watch_table = %s"
TABLE_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

# -- Subscriptions ------------------------------------------------------------------------------

SUBSCRIPTION_COLUMNS = """
    subscription_num, endpoint_url, workstation, customer_key, watch_table, polling_seconds,
    date_time_start, date_time_stop, note,
    CASE WHEN status = 'active' AND date_time_stop <= now() THEN 'expired' ELSE status END
        AS status,
    status_reason, last_error, last_http_status, consecutive_failures, next_attempt_at,
    last_attempt_at, last_success_at, claim_job IS NOT NULL AND claim_expires_at > now()
        AS in_flight
"""
SUBSCRIPTION_INSERT = f"""
INSERT INTO apievents.subscription
    (endpoint_url, workstation, customer_key, watch_table, polling_seconds,
     date_time_start, date_time_stop, note, secret)
VALUES (%(endpoint_url)s, %(workstation)s, %(customer_key)s, %(watch_table)s,
        %(polling_seconds)s, coalesce(%(date_time_start)s, now()), %(date_time_stop)s,
        %(note)s, %(secret)s)
RETURNING {SUBSCRIPTION_COLUMNS}
"""
SUBSCRIPTION_GET = (
    f"SELECT {SUBSCRIPTION_COLUMNS} FROM apievents.subscription WHERE subscription_num = %s"
)
SUBSCRIPTION_LIST = (
    f"SELECT {SUBSCRIPTION_COLUMNS} FROM apievents.subscription ORDER BY subscription_num"
)
SUBSCRIPTION_LIST_FOR = (
    f"SELECT {SUBSCRIPTION_COLUMNS} FROM apievents.subscription WHERE customer_key = %s "
    "ORDER BY subscription_num"
)
SUBSCRIPTION_DELETE = (
    f"DELETE FROM apievents.subscription WHERE subscription_num = %s "
    f"RETURNING {SUBSCRIPTION_COLUMNS}"
)
# Any change by an operator drops the claim: a window in flight stops at its next batch (its
# lease check fails) and the subscription is re-issued from DateTimeStart with the new settings.
_RELEASE = """
    claim_job = NULL, claim_holder = NULL, claimed_at = NULL, claim_window_end = NULL,
    claim_expires_at = NULL, claim_seq = 0, updated_at = now()
"""
SUBSCRIPTION_SET_STATUS = f"""
UPDATE apievents.subscription
SET status = %(status)s, status_reason = %(reason)s, next_attempt_at = now(),
    consecutive_failures = CASE WHEN %(status)s = 'active' THEN 0
                                ELSE consecutive_failures END,
    failing_since = CASE WHEN %(status)s = 'active' THEN NULL ELSE failing_since END,
    {_RELEASE}
WHERE subscription_num = %(num)s
RETURNING {SUBSCRIPTION_COLUMNS}
"""
SUBSCRIPTION_LOCK = """
SELECT date_time_start, date_time_stop FROM apievents.subscription
WHERE subscription_num = %s FOR UPDATE
"""
AS_TIMESTAMPTZ = "SELECT %s::timestamp::timestamptz"
# Moving DateTimeStart back re-sends everything changed since. The claim is dropped, so a window
# in flight stops at its next batch and its outcome can no longer move the watermark.
REWIND = f"""
UPDATE apievents.subscription
SET date_time_start = %(to)s, cursor_key = NULL, next_attempt_at = now(), {_RELEASE}
WHERE subscription_num = %(num)s AND date_time_start >= %(to)s
RETURNING {SUBSCRIPTION_COLUMNS}
"""
ATTEMPTS = """
SELECT attempt_id, at, window_start, window_end, batch, rows, http_status, latency_ms,
       error_class
FROM apievents.attempt WHERE subscription_num = %s
ORDER BY attempt_id DESC LIMIT %s
"""
ATTEMPTS_KEPT_PER_SUBSCRIPTION = 1000
PRUNE_ATTEMPTS = f"""
DELETE FROM apievents.attempt a
WHERE a.at < now() - %(retention)s * interval '1 second'
   OR a.attempt_id <= (SELECT b.attempt_id FROM apievents.attempt b
                       WHERE b.subscription_num = a.subscription_num
                       ORDER BY b.attempt_id DESC
                       OFFSET {ATTEMPTS_KEPT_PER_SUBSCRIPTION} LIMIT 1)
"""
UPDATABLE = (
    "endpoint_url",
    "workstation",
    "customer_key",
    "watch_table",
    "polling_seconds",
    "date_time_start",
    "date_time_stop",
    "note",
    "secret",
)


def subscription_update(columns: list[str]) -> sql.Composed:
    """UPDATE of the named subscription columns (each must be in UPDATABLE)."""
    assert columns and set(columns) <= set(UPDATABLE), columns
    sets = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(c), sql.Placeholder(c)) for c in columns
    )
    if "date_time_start" in columns:  # a new start is a whole timestamp: no cursor within it
        sets = sql.SQL(", ").join([sets, sql.SQL("cursor_key = NULL")])
    if "secret" in columns:  # rotation: the replaced secret keeps signing for the overlap
        sets = sql.SQL(", ").join(
            [
                sets,
                sql.SQL(
                    "previous_secret = secret, "
                    "previous_secret_expires_at = now() + %(overlap)s * interval '1 second'"
                ),
            ]
        )
    return sql.SQL(
        "UPDATE apievents.subscription SET {sets}, next_attempt_at = now(), {release} "
        "WHERE subscription_num = %(num)s RETURNING {cols}"
    ).format(sets=sets, release=sql.SQL(_RELEASE), cols=sql.SQL(SUBSCRIPTION_COLUMNS))


# -- API keys -----------------------------------------------------------------------------------

API_KEY_INSERT = """
INSERT INTO apievents.api_key (customer_key, key_hash) VALUES (%s, %s)
RETURNING api_key_id, created_at
"""
API_KEY_LOOKUP = """
SELECT customer_key FROM apievents.api_key WHERE key_hash = %s AND revoked_at IS NULL
"""
API_KEY_REVOKE = """
UPDATE apievents.api_key SET revoked_at = now()
WHERE revoked_at IS NULL AND (key_hash = %(hash)s OR customer_key = %(customer_key)s)
RETURNING api_key_id, customer_key
"""
API_KEY_LIST = """
SELECT api_key_id, customer_key, created_at, revoked_at FROM apievents.api_key
ORDER BY api_key_id
"""

# -- Producer -----------------------------------------------------------------------------------

# The window end is bounded by the database server's clock and by every open transaction:
# a transaction that started at T may still commit rows stamped T or later (now() is its start
# time), so no window may end at or after T while it is open. Read the clock first, then the
# activity snapshot (PostgreSQL caches that snapshot for the rest of the transaction).
SERVER_CLOCK = "SELECT clock_timestamp()"
OLDEST_OPEN_TRANSACTION = """
SELECT min(xact_start) FROM pg_stat_activity
WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() AND datname = current_database()
  AND backend_type NOT IN ('autovacuum worker', 'autovacuum launcher', 'walsender',
                           'checkpointer', 'background writer', 'walwriter', 'archiver',
                           'startup', 'logical replication launcher')
"""
# Without pg_read_all_stats (or superuser), other roles' transactions show no xact_start and
# the bound above could not see them.
CAN_SEE_ALL_TRANSACTIONS = """
SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')
FROM pg_roles WHERE rolname = current_user
"""

# Lock the subscriptions that are due and not held by a live claim. SKIP LOCKED lets several
# producer replicas share the work without waiting on each other.
DUE_FOR_UPDATE = """
SELECT subscription_num, watch_table, date_time_start, cursor_key, date_time_stop,
       consecutive_failures
FROM apievents.subscription
WHERE status = 'active'
  AND next_attempt_at <= now()
  AND (date_time_stop IS NULL OR date_time_stop > now())
  AND (claim_job IS NULL OR claim_expires_at <= now())
ORDER BY next_attempt_at, subscription_num
LIMIT %s
FOR UPDATE SKIP LOCKED
"""

# Nothing changed since DateTimeStart: no job, just look again after PollingSeconds.
RESCHEDULE_IDLE = f"""
UPDATE apievents.subscription
SET next_attempt_at = now() + polling_seconds * interval '1 second', {_RELEASE}
WHERE subscription_num = ANY(%s)
"""

CLAIM = """
UPDATE apievents.subscription s
SET claim_job = c.job, claim_holder = NULL, claimed_at = now(), claim_window_end = c.window_end,
    claim_expires_at = now() + %(lease)s * interval '1 second', claim_seq = 0
FROM unnest(%(nums)s::bigint[], %(jobs)s::uuid[], %(ends)s::timestamptz[])
    AS c(num, job, window_end)
WHERE s.subscription_num = c.num
"""

# A job the broker never confirmed: give the window back at once instead of waiting for its lease.
RELEASE_CLAIMS = f"""
UPDATE apievents.subscription SET next_attempt_at = now(), {_RELEASE}
WHERE claim_job = ANY(%s::uuid[])
"""


def newest_change(wt: WatchTable) -> sql.Composed:
    """The newest timestamp in a watched table: one index lookup, shared by its subscriptions."""
    return sql.SQL("SELECT max({ts}) FROM {table}").format(ts=wt.ts_ident, table=wt.table_ident)


# Per WatchTable, the position of the furthest-behind active subscription (and whether it sits
# inside a timestamp, so rows at that timestamp may still be due).
LAGGING_POSITIONS = """
SELECT DISTINCT ON (watch_table) watch_table, date_time_start, cursor_key IS NOT NULL
FROM apievents.subscription
WHERE status = 'active' AND (date_time_stop IS NULL OR date_time_stop > now())
ORDER BY watch_table, date_time_start, cursor_key IS NOT NULL DESC
"""


def oldest_change_after(wt: WatchTable, *, inclusive: bool) -> sql.Composed:
    """The oldest change after a position: one index lookup. Parameter: start."""
    op = sql.SQL(">=" if inclusive else ">")
    return sql.SQL("SELECT min({ts}) FROM {table} WHERE {ts} {op} %(start)s").format(
        ts=wt.ts_ident, table=wt.table_ident, op=op
    )


# -- Worker -------------------------------------------------------------------------------------

# The worker that starts (or restarts) a job becomes the claim's holder. A previous holder of the
# same job notices at its next lease check and stops, so one window never runs twice at once.
# It resumes from the subscription's cursor, which checkpoints may have moved past the job's
# window start.
TAKE_OVER = f"""
UPDATE apievents.subscription s
SET claim_holder = %(holder)s, claim_expires_at = now() + %(lease)s * interval '1 second',
    last_attempt_at = now()
FROM apievents.watch_table w
WHERE s.subscription_num = %(num)s AND s.claim_job = %(job)s AND s.status = 'active'
  AND w.name = s.watch_table
RETURNING s.date_time_start, s.cursor_key, s.claim_seq, s.endpoint_url, s.customer_key,
          s.workstation, s.secret,
          CASE WHEN s.previous_secret_expires_at > now() THEN s.previous_secret END,
          w.{REGISTRY_COLUMNS.replace(", ", ", w.")}
"""

EXTEND_LEASE = """
UPDATE apievents.subscription
SET claim_expires_at = now() + %(lease)s * interval '1 second'
WHERE subscription_num = %(num)s AND claim_job = %(job)s AND claim_holder = %(holder)s
"""


RECORD_ATTEMPT = """
INSERT INTO apievents.attempt (subscription_num, window_start, window_end, batch, rows,
                               http_status, latency_ms, error_class)
VALUES (%(num)s, %(window_start)s, %(window_end)s, %(batch)s, %(rows)s, %(http_status)s,
        %(latency_ms)s, %(error_class)s)
"""


def window_page(wt: WatchTable, *, first: bool) -> sql.Composed:
    """One keyset page of a window in (timestamp, key) order; never OFFSET.

    The first page takes ``ts > start``; later pages continue after the last (ts, key) sent.
    Parameters: start or (after_ts, after_key), end, limit. Each row is the WatchTable's fields
    followed by the timestamp and the key, so paging works whatever fields are delivered.
    """
    after = (
        sql.SQL("{ts} > %(start)s")
        if first
        else sql.SQL("({ts}, {key}) > (%(after_ts)s, %(after_key)s)")
    ).format(ts=wt.ts_ident, key=wt.key_ident)
    return sql.SQL(
        "SELECT {cols}, {ts}, {key} FROM {table} WHERE {after} AND {ts} <= %(end)s "
        "ORDER BY {ts}, {key} LIMIT %(limit)s"
    ).format(
        cols=sql.SQL(", ").join(sql.Identifier(c) for c, _ in wt.fields),
        table=wt.table_ident,
        after=after,
        ts=wt.ts_ident,
        key=wt.key_ident,
    )


# -- Committer ----------------------------------------------------------------------------------

# Compare-and-set: only the claim's current holder moves the watermark. A late, duplicate or
# superseded outcome matches no row, because each start of a job has its own holder id.
COMMIT_SUCCESS = f"""
UPDATE apievents.subscription
SET date_time_start = %(window_end)s, cursor_key = NULL,
    next_attempt_at = claimed_at + polling_seconds * interval '1 second',
    consecutive_failures = 0, last_error = NULL, last_http_status = %(http_status)s,
    failing_since = NULL, last_success_at = now(), {_RELEASE}
WHERE subscription_num = %(num)s AND claim_job = %(job)s AND claim_holder = %(holder)s
"""

# Progress inside a window: the claim stays; claim_seq keeps checkpoints from going backwards
# when two committers apply them out of order.
COMMIT_CHECKPOINT = """
UPDATE apievents.subscription
SET date_time_start = %(position_ts)s, cursor_key = %(position_key)s, claim_seq = %(seq)s,
    failing_since = NULL, last_success_at = now(), updated_at = now()
WHERE subscription_num = %(num)s AND claim_job = %(job)s AND claim_holder = %(holder)s
  AND claim_seq < %(seq)s
"""

# A failure backs off; 410 Gone, or failing continuously for disable_after seconds, disables.
COMMIT_FAILURE = f"""
UPDATE apievents.subscription
SET consecutive_failures = consecutive_failures + 1, last_error = %(error)s,
    last_http_status = %(http_status)s,
    failing_since = coalesce(failing_since, now()),
    status = CASE WHEN %(gone)s
                    OR failing_since <= now() - %(disable_after)s * interval '1 second'
                  THEN 'disabled' ELSE status END,
    status_reason = CASE
        WHEN %(gone)s THEN 'the endpoint answered 410 Gone'
        WHEN failing_since <= now() - %(disable_after)s * interval '1 second'
        THEN 'failing continuously since ' || failing_since::text
        ELSE status_reason END,
    next_attempt_at = now() + %(delay)s * interval '1 second', {_RELEASE}
WHERE subscription_num = %(num)s AND claim_job = %(job)s AND claim_holder = %(holder)s
"""
