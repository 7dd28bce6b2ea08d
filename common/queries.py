"""Every SQL statement the service issues, in one place.

These are the statements on apievents' own state. What reads a watched table is composed
from the WatchTable registry: common/queries_pg.py for PostgreSQL, common/queries_mysql.py for
MariaDB/MySQL sources. Values are always parameters.

A statement about many windows at once takes them as one JSON array of objects
(``jsonb_to_recordset``, parameter built by ``rows``): encoding it with orjson costs a tenth
of what binding one array per column does in psycopg, on the paths that run once per window.
"""

from __future__ import annotations

from typing import Any

import orjson
from psycopg import sql


def rows(objects: list[dict[str, Any]]) -> str:
    """A ``jsonb_to_recordset`` parameter: the objects as a JSON array."""
    return orjson.dumps(objects).decode()


PING = "SELECT 1"

# -- WatchTable registry ------------------------------------------------------------------------

REGISTRY_COLUMNS = (
    "name, table_schema, table_name, key_column, timestamp_column, fields, payload_format, "
    "enums, derived, row_filter, source"
)
REGISTRY_GET = f"SELECT {REGISTRY_COLUMNS} FROM apievents.watch_table WHERE name = %s"
REGISTRY_LIST = f"SELECT {REGISTRY_COLUMNS} FROM apievents.watch_table ORDER BY name"
REGISTRY_INSERT = """
INSERT INTO apievents.watch_table
    (name, table_schema, table_name, key_column, timestamp_column, fields, payload_format,
     enums, derived, row_filter, source)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""
# Sources and which CustomerKeys they serve. The URL (with its password) is read only by the
# services that connect; listings show it redacted.
SOURCE_INSERT = "INSERT INTO apievents.source (name, kind, url) VALUES (%s, %s, %s)"
SOURCE_MAP_CUSTOMER = """
INSERT INTO apievents.customer_source (customer_key, source) VALUES (%s, %s)
"""
SOURCE_LIST = """
SELECT s.name, s.kind, s.url,
       coalesce(array_agg(c.customer_key ORDER BY c.customer_key)
                FILTER (WHERE c.customer_key IS NOT NULL), '{}'),
       (SELECT count(*) FROM apievents.watch_table w WHERE w.source = s.name)
FROM apievents.source s LEFT JOIN apievents.customer_source c ON c.source = s.name
GROUP BY s.name ORDER BY s.name
"""
SOURCE_DELETE = "DELETE FROM apievents.source WHERE name = %s"
SOURCE_OF_CUSTOMER = "SELECT source FROM apievents.customer_source WHERE customer_key = %s"
REGISTRY_DELETE = "DELETE FROM apievents.watch_table WHERE name = %s"
REGISTRY_IN_USE = "SELECT count(*) FROM apievents.subscription WHERE watch_table = %s"
# What registration checks: the relation's kind, its columns, whether the key column alone has a
# unique index that covers every row, and the triggers that could stamp the timestamp column.
RELATION = """
SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""
TABLE_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attnum
FROM pg_attribute a
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
KEY_IS_UNIQUE = """
SELECT EXISTS (SELECT 1 FROM pg_index i
               WHERE i.indrelid = %s AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
                 AND i.indnkeyatts = 1 AND i.indkey[0] = %s)
"""
# Enabled BEFORE ... FOR EACH ROW triggers: their events (tgtype bits: 4 insert, 16 update),
# and the text in which their function or arguments would name the column they set.
ROW_TRIGGERS = """
SELECT t.tgtype::int & 20, p.prosrc || ' ' || encode(t.tgargs, 'escape')
FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
WHERE t.tgrelid = %s AND NOT t.tgisinternal AND t.tgenabled <> 'D'
  AND t.tgtype::int & 3 = 3
"""

# -- Subscriptions ------------------------------------------------------------------------------

SUBSCRIPTION_COLUMNS = """
    subscription_num, endpoint_url, workstation, customer_key, watch_table, polling_seconds,
    date_time_start, date_time_stop, note,
    CASE WHEN status = 'active' AND date_time_start >= date_time_stop AND cursor_key IS NULL
         THEN 'expired' ELSE status END AS status,
    status_reason, last_error, last_http_status, consecutive_failures, next_attempt_at,
    last_attempt_at, last_success_at, claim_job IS NOT NULL AND claim_expires_at > now()
        AS in_flight, ui_event_type, last_error_class
"""
SUBSCRIPTION_INSERT = f"""
INSERT INTO apievents.subscription
    (endpoint_url, workstation, customer_key, watch_table, polling_seconds,
     date_time_start, date_time_stop, note, secret, ui_event_type)
VALUES (%(endpoint_url)s, %(workstation)s, %(customer_key)s, %(watch_table)s,
        %(polling_seconds)s, %(date_time_start)s, %(date_time_stop)s,
        %(note)s, %(secret)s, %(ui_event_type)s)
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
SUBSCRIPTION_COUNT_FOR = "SELECT count(*) FROM apievents.subscription WHERE customer_key = %s"
# Creates of one customer take turns (until commit), so a cap on their number holds.
LOCK_CUSTOMER = "SELECT pg_advisory_xact_lock(1668641652, hashtext(%s))"  # 1668641652: "cust"
SUBSCRIPTION_DELETE = (
    f"DELETE FROM apievents.subscription WHERE subscription_num = %s "
    f"RETURNING {SUBSCRIPTION_COLUMNS}"
)
# Dropping a claim: the subscription may be issued again.
_RELEASE = """
    claim_job = NULL, claim_holder = NULL, claimed_at = NULL, claim_window_end = NULL,
    claim_expires_at = NULL, claim_seq = 0, claim_revoked = false, updated_at = now()
"""
# An operator's change must not start a second POST while one may be in flight. A claim no
# worker holds (or whose lease ran out) is dropped; a live one is revoked: its holder sends no
# further batch (its lease check fails) and reports, and the committer drops the claim then.
# Either way the subscription is due at once, with the new settings, from DateTimeStart.
_LIVE = "(claim_holder IS NOT NULL AND claim_expires_at > now())"
_REVOKE = (
    ", ".join(
        f"{c} = CASE WHEN {_LIVE} THEN {c} END"
        for c in ("claim_job", "claim_holder", "claimed_at", "claim_window_end", "claim_expires_at")
    )
    + f", claim_seq = CASE WHEN {_LIVE} THEN claim_seq ELSE 0 END, claim_revoked = {_LIVE}"
    + ", next_attempt_at = now(), updated_at = now()"
)
SUBSCRIPTION_SET_STATUS = f"""
UPDATE apievents.subscription
SET status = %(status)s, status_reason = %(reason)s,
    consecutive_failures = CASE WHEN %(status)s = 'active' THEN 0
                                ELSE consecutive_failures END,
    failing_since = CASE WHEN %(status)s = 'active' THEN NULL ELSE failing_since END,
    {_REVOKE}
WHERE subscription_num = %(num)s
RETURNING {SUBSCRIPTION_COLUMNS}
"""
SUBSCRIPTION_LOCK = """
SELECT date_time_start, date_time_stop FROM apievents.subscription
WHERE subscription_num = %s FOR UPDATE
"""
AS_TIMESTAMPTZ = "SELECT %s::timestamp::timestamptz"
# Moving DateTimeStart back re-sends everything changed since. The claim is revoked, so a window
# in flight stops at its next batch and its outcome can no longer move the watermark. Setting
# the start it already has keeps the position inside that timestamp (the cursor).
_KEEP_CURSOR = "cursor_key = CASE WHEN date_time_start = %(to)s THEN cursor_key END"
REWIND = f"""
UPDATE apievents.subscription
SET date_time_start = %(to)s, {_KEEP_CURSOR}, {_REVOKE}
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
# A replaced secret signs beside the new one until its overlap ends; after that it is dead
# weight that could only leak.
CLEAR_EXPIRED_SECRETS = """
UPDATE apievents.subscription SET previous_secret = NULL, previous_secret_expires_at = NULL
WHERE previous_secret IS NOT NULL AND previous_secret_expires_at <= now()
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
    "ui_event_type",
)


# Changes that leave a window in flight as good as it was: they never touch the claim.
KEEPS_CLAIM = frozenset({"note", "polling_seconds", "secret", "ui_event_type"})


def subscription_update(columns: list[str]) -> sql.Composed:
    """UPDATE of the named subscription columns (each must be in UPDATABLE)."""
    assert columns and set(columns) <= set(UPDATABLE), columns
    sets = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(c), sql.Placeholder(c)) for c in columns
    )
    if "date_time_start" in columns:  # a new start is a whole timestamp: no cursor within it
        keep = _KEEP_CURSOR.replace("%(to)s", "%(date_time_start)s")
        sets = sql.SQL(", ").join([sets, sql.SQL(keep)])
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
    claim = "updated_at = now()" if set(columns) <= KEEPS_CLAIM else _REVOKE
    return sql.SQL(
        "UPDATE apievents.subscription SET {sets}, {claim} "
        "WHERE subscription_num = %(num)s RETURNING {cols}"
    ).format(sets=sets, claim=sql.SQL(claim), cols=sql.SQL(SUBSCRIPTION_COLUMNS))


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

# The window end is bounded by the database server's clock and by every write that can still
# commit (common/watermark.py). A transaction that started at T may commit rows stamped T (now()
# is its start time), so no window may end at or after T while it is open. An active statement
# shows its query_start (the same timestamp, for a transaction's first statement) a moment
# before its xact_start. Prepared transactions and sessions with track_activities off show no
# start at all: they are counted, and the end then stays at the frontier. Read the clock first,
# then the activity snapshot (PostgreSQL caches that snapshot for the rest of the transaction).
SERVER_CLOCK = "SELECT clock_timestamp()"
_SESSIONS = """
FROM pg_stat_activity
WHERE pid <> pg_backend_pid() AND datname = current_database()
  AND backend_type NOT IN ('autovacuum worker', 'autovacuum launcher', 'walsender',
                           'checkpointer', 'background writer', 'walwriter', 'archiver',
                           'startup', 'logical replication launcher')
"""
WRITES_IN_FLIGHT = f"""
SELECT (SELECT min(least(xact_start, CASE WHEN state <> 'idle' THEN query_start END))
        {_SESSIONS}),
       (SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database())
     + (SELECT count(*) {_SESSIONS} AND state = 'disabled'),
       (SELECT window_end FROM apievents.window_frontier WHERE source = '')
"""
ADVANCE_FRONTIER = """
INSERT INTO apievents.window_frontier AS f (source, window_end) VALUES ('', %s)
ON CONFLICT (source) DO UPDATE SET window_end = excluded.window_end
WHERE f.window_end < excluded.window_end
"""
# The same frontier for a MariaDB/MySQL source, under the source's name.
FRONTIER_OF = "SELECT window_end FROM apievents.window_frontier WHERE source = %s"
ADVANCE_FRONTIER_OF = """
INSERT INTO apievents.window_frontier AS f (source, window_end) VALUES (%s, %s)
ON CONFLICT (source) DO UPDATE SET window_end = excluded.window_end
WHERE f.window_end < excluded.window_end
"""
# Without pg_read_all_stats (or superuser), other roles' transactions show no xact_start; with
# track_activities off, no session shows one. Either way the bound above would be blind.
CAN_SEE_ALL_TRANSACTIONS = """
SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'),
       current_setting('track_activities')::boolean
FROM pg_roles WHERE rolname = current_user
"""

# Lock the subscriptions that are due and not held by a live claim, on one source's WatchTables
# (each source's window end is read from its own server). SKIP LOCKED lets several
# producer replicas share the work without waiting on each other.
# A subscription stays due until its watermark reaches DateTimeStop: rows stamped before the
# stop are still owed after the stop has passed.
_OWES = """
    (date_time_stop IS NULL OR date_time_start < date_time_stop
     OR (date_time_start = date_time_stop AND cursor_key IS NOT NULL))
"""
_DUE = f"""
    status = 'active' AND next_attempt_at <= now() AND {_OWES}
    AND (claim_job IS NULL OR claim_expires_at <= now())
    AND watch_table IN (SELECT name FROM apievents.watch_table
                        WHERE coalesce(source, '') = %(source)s)
"""
# One customer's windows in flight are capped when work is claimed, so its hanging endpoints
# take at most that many of the workers' slots (subscriptions without a CustomerKey are the
# operator's own and not capped; a cap of 0 turns it off). Within a customer, the longest due
# go first. Several producer replicas may each claim up to the cap in the same moment. The
# candidates are computed once, as an array: a row that another transaction updated meanwhile
# is re-checked against the outer conditions only (a join there would be re-run for each).
DUE_FOR_UPDATE = f"""
SELECT s.subscription_num, s.watch_table, s.date_time_start, s.cursor_key, s.date_time_stop,
       s.consecutive_failures
FROM apievents.subscription s
WHERE {_DUE}
  AND s.subscription_num = ANY(ARRAY(
    WITH due AS (
        SELECT subscription_num, customer_key, row_number() OVER (
            PARTITION BY customer_key ORDER BY next_attempt_at, subscription_num) AS nth
        FROM apievents.subscription WHERE {_DUE}
    ), busy AS (
        SELECT customer_key, count(*) AS n FROM apievents.subscription
        WHERE claim_job IS NOT NULL AND claim_expires_at > now()
          AND customer_key IN (SELECT customer_key FROM due)
        GROUP BY customer_key
    )
    SELECT d.subscription_num FROM due d LEFT JOIN busy b USING (customer_key)
    WHERE d.customer_key = '' OR %(cap)s <= 0 OR d.nth + coalesce(b.n, 0) <= %(cap)s))
ORDER BY s.next_attempt_at, s.subscription_num
LIMIT %(limit)s
FOR UPDATE OF s SKIP LOCKED
"""

# Each subscription polls at its own phase of its PollingSeconds: the golden-ratio multiple of
# its number, so consecutive numbers spread evenly. Its next poll is the first point of that
# phase after the claim, never more than PollingSeconds later. Subscriptions created (or freed
# by a restart) together would otherwise poll together forever, as one burst a period.
_PHASE = "mod(subscription_num * 0.6180339887498949, 1)::float8 * polling_seconds"


def _next_poll(anchor: str) -> str:
    """SQL: the first point of the subscription's phase strictly after ``anchor``."""
    return (
        f"to_timestamp((floor((extract(epoch FROM {anchor})::float8 - {_PHASE}) "
        f"/ polling_seconds) + 1) * polling_seconds + {_PHASE})"
    )


# Nothing changed since DateTimeStart: no job; look again at its next poll. Every change up
# to the safe window end was delivered, so DateTimeStart moves there (never past DateTimeStop,
# never back), as Open Dental moves it on every poll: a live subscription's start keeps pace.
_IDLE_START = "greatest(date_time_start, least(%(end)s, coalesce(date_time_stop, 'infinity')))"
RESCHEDULE_IDLE = f"""
UPDATE apievents.subscription
SET next_attempt_at = {_next_poll("now()")},
    cursor_key = CASE WHEN {_IDLE_START} > date_time_start THEN NULL ELSE cursor_key END,
    date_time_start = {_IDLE_START}, {_RELEASE}
WHERE subscription_num = ANY(%(nums)s)
"""

CLAIM = """
UPDATE apievents.subscription s
SET claim_job = c.job, claim_holder = NULL, claimed_at = now(), claim_window_end = c.window_end,
    claim_expires_at = now() + %(lease)s * interval '1 second', claim_seq = 0,
    claim_revoked = false
FROM jsonb_to_recordset(%(claims)s::jsonb) AS c(num bigint, job uuid, window_end timestamptz)
WHERE s.subscription_num = c.num
"""

# A job the broker refused (nacked) was never routed: give the window back at once instead of
# waiting for its lease. A job whose confirm did not come may have been routed; it keeps its
# claim until the lease runs out, so no second job can run beside it.
RELEASE_CLAIMS = f"""
UPDATE apievents.subscription SET next_attempt_at = now(), {_RELEASE}
WHERE claim_job = ANY(%s::uuid[])
"""


# Per WatchTable, the position of the furthest-behind active subscription (and whether it sits
# inside a timestamp, so rows at that timestamp may still be due).
LAGGING_POSITIONS = f"""
SELECT DISTINCT ON (watch_table) watch_table, date_time_start, cursor_key IS NOT NULL
FROM apievents.subscription
WHERE status = 'active' AND {_OWES}
ORDER BY watch_table, date_time_start, cursor_key IS NOT NULL DESC
"""


# -- Worker -------------------------------------------------------------------------------------

# A worker takes over every claim of a batch of jobs in one statement, and becomes each
# claim's holder, but only of a claim nobody holds or whose holder's lease ran out: a broker
# may hand a job to a second worker while the first is still sending (a lost connection), and
# one window must never run twice at once. A window resumes from the subscription's cursor,
# which checkpoints may have moved past its start. The registry row comes along: it, not a
# worker's cache, says which table a window reads (a name may be removed and registered again).
# The take-over returns each window's registry row with its JSON as text: workers build a
# WatchTable once per distinct row (worker/takeover.py), not once per window.
_JSON_COLUMNS = {"fields", "enums", "derived", "row_filter"}
_REGISTRY_NAMES = [c.strip() for c in REGISTRY_COLUMNS.split(",")]
_W_REGISTRY = ", ".join(f"w.{c}::text" if c in _JSON_COLUMNS else f"w.{c}" for c in _REGISTRY_NAMES)
REGISTRY_JSON_AT = frozenset(i for i, c in enumerate(_REGISTRY_NAMES) if c in _JSON_COLUMNS)
TAKE_OVER = f"""
UPDATE apievents.subscription s
SET claim_holder = c.holder, claim_expires_at = now() + %(lease)s * interval '1 second',
    last_attempt_at = now()
FROM jsonb_to_recordset(%(windows)s::jsonb) AS c(num bigint, job uuid, holder uuid),
     apievents.watch_table w
WHERE s.subscription_num = c.num AND s.claim_job = c.job AND s.status = 'active'
  AND NOT s.claim_revoked AND (s.claim_holder IS NULL OR s.claim_expires_at <= now())
  AND w.name = s.watch_table
RETURNING c.job::text, s.date_time_start, s.cursor_key, s.claim_seq, s.endpoint_url,
          s.customer_key, s.workstation, s.secret,
          CASE WHEN s.previous_secret_expires_at > now() THEN s.previous_secret END,
          {_W_REGISTRY}
"""

# Why a take-over found nothing: the claim is held by a live holder (busy), or it moved on.
CLAIM_BUSY = """
SELECT c.job::text FROM unnest(%(nums)s::bigint[], %(jobs)s::uuid[]) AS c(num, job)
JOIN apievents.subscription s ON s.subscription_num = c.num AND s.claim_job = c.job
WHERE s.claim_holder IS NOT NULL AND s.claim_expires_at > now() AND NOT s.claim_revoked
"""

# A worker that hands a job back (it is shutting down, or lost the database) has no POST in
# flight: it steps down as holder, so the requeued job can be taken over at once instead of
# after the lease.
HAND_BACK = """
UPDATE apievents.subscription s SET claim_holder = NULL
FROM unnest(%(nums)s::bigint[], %(jobs)s::uuid[], %(holders)s::uuid[]) AS c(num, job, holder)
WHERE s.subscription_num = c.num AND s.claim_job = c.job AND s.claim_holder = c.holder
"""

EXTEND_LEASE = """
UPDATE apievents.subscription
SET claim_expires_at = now() + %(lease)s * interval '1 second'
WHERE subscription_num = %(num)s AND claim_job = %(job)s AND claim_holder = %(holder)s
  AND NOT claim_revoked
"""


# Whether a worker still holds a claim whose lease outlasts its next POST by ``margin``
# seconds, by the database's clock: a read, with no row version and no WAL, where
# EXTEND_LEASE would write both (every batch of a window checks its claim). No row: revoked,
# moved on, or the lease is too short (the worker then extends it, or finds it lost).
CLAIM_HELD = """
SELECT 1 FROM apievents.subscription
WHERE subscription_num = %(num)s AND claim_job = %(job)s AND claim_holder = %(holder)s
  AND NOT claim_revoked AND claim_expires_at > now() + %(margin)s * interval '1 second'
"""


# The attempt-log rows of a committer batch, in one statement.
RECORD_ATTEMPTS = """
INSERT INTO apievents.attempt (subscription_num, window_start, window_end, batch, rows,
                               http_status, latency_ms, error_class)
SELECT * FROM jsonb_to_recordset(%(attempts)s::jsonb)
    AS a(num bigint, window_start timestamptz, window_end timestamptz, batch int, rows int,
         http_status int, latency_ms int, error_class text)
"""


# -- Committer ----------------------------------------------------------------------------------

# Compare-and-set: only the claim's current holder moves the watermark, and only while no edit
# revoked the claim. A late, duplicate or superseded outcome matches no row, because each start
# of a job has its own holder id.
_HOLDER = """
subscription_num = %(num)s AND claim_job = %(job)s AND claim_holder = %(holder)s
  AND NOT claim_revoked
"""
# Every success of a committer batch in one statement: the common case, so it is the cheap one.
COMMIT_SUCCESSES = f"""
UPDATE apievents.subscription s
SET date_time_start = o.window_end, cursor_key = NULL,
    next_attempt_at = {_next_poll("s.claimed_at")},
    consecutive_failures = 0, last_error = NULL, last_error_class = NULL,
    last_http_status = o.http_status,
    failing_since = NULL, last_success_at = now(), {_RELEASE}
FROM jsonb_to_recordset(%(outcomes)s::jsonb)
    AS o(num bigint, job uuid, holder uuid, window_end timestamptz, http_status int)
WHERE s.subscription_num = o.num AND s.claim_job = o.job AND s.claim_holder = o.holder
  AND NOT s.claim_revoked
RETURNING o.num, o.job::text, o.holder::text
"""

# Progress inside a window: the claim stays; claim_seq keeps checkpoints from going backwards
# when two committers apply them out of order.
COMMIT_CHECKPOINT = f"""
UPDATE apievents.subscription
SET date_time_start = %(position_ts)s, cursor_key = %(position_key)s, claim_seq = %(seq)s,
    failing_since = NULL, last_success_at = now(), updated_at = now()
WHERE {_HOLDER} AND claim_seq < %(seq)s
"""

# A failure. A window that delivered nothing extends the failure streak and backs off; 410 Gone,
# or failing continuously for disable_after seconds, disables. A window that delivered some
# batches first keeps that progress (the position of its last row answered 200), does not
# extend the streak, and is retried at its next poll behind the others that are due: an
# endpoint that fails now and then must not fall behind for good.
_FAILING_TOO_LONG = (
    "NOT %(progress)s AND failing_since <= now() - %(disable_after)s * interval '1 second'"
)
COMMIT_FAILURE = f"""
UPDATE apievents.subscription
SET date_time_start = CASE WHEN %(progress)s THEN %(position_ts)s ELSE date_time_start END,
    cursor_key = CASE WHEN %(progress)s THEN %(position_key)s ELSE cursor_key END,
    consecutive_failures = CASE WHEN %(progress)s THEN 0 ELSE consecutive_failures + 1 END,
    last_error = %(error)s, last_error_class = %(error_class)s,
    last_http_status = %(http_status)s,
    failing_since = CASE WHEN %(progress)s THEN NULL ELSE coalesce(failing_since, now()) END,
    last_success_at = CASE WHEN %(progress)s THEN now() ELSE last_success_at END,
    status = CASE WHEN %(gone)s OR {_FAILING_TOO_LONG} THEN 'disabled' ELSE status END,
    status_reason = CASE
        WHEN %(gone)s THEN 'the endpoint answered 410 Gone'
        WHEN {_FAILING_TOO_LONG} THEN 'failing continuously since ' || failing_since::text
        ELSE status_reason END,
    next_attempt_at = CASE
        WHEN %(progress)s THEN greatest({_next_poll("claimed_at")},
                                        now() + %(retry_after)s * interval '1 second')
        ELSE now() + %(delay)s * interval '1 second' END,
    {_RELEASE}
WHERE {_HOLDER}
"""

# Outcomes of revoked claims (an operator edited the subscription mid-window): drop the claim,
# never touch the watermark; the subscription is due again at once, from DateTimeStart.
RELEASE_REVOKED = f"""
UPDATE apievents.subscription s SET next_attempt_at = now(), {_RELEASE}
FROM jsonb_to_recordset(%(claims)s::jsonb) AS o(num bigint, job uuid, holder uuid)
WHERE s.subscription_num = o.num AND s.claim_job = o.job AND s.claim_holder = o.holder
  AND s.claim_revoked
RETURNING o.num, o.job::text, o.holder::text
"""
