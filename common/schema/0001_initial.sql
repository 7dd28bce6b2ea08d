-- The service's own state. Everything lives in schema "apievents" so it never collides with
-- the office's tables.

CREATE TABLE apievents.watch_table (
    name             text PRIMARY KEY,
    table_schema     text NOT NULL,
    table_name       text NOT NULL,
    key_column       text NOT NULL,
    timestamp_column text NOT NULL,
    -- [[column, JsonFieldName], ...] in output order
    fields           jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE apievents.subscription (
    subscription_num     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_url         text NOT NULL,
    workstation          text NOT NULL DEFAULT '',
    customer_key         text NOT NULL DEFAULT '',
    watch_table          text NOT NULL REFERENCES apievents.watch_table (name),
    polling_seconds      integer NOT NULL CHECK (polling_seconds > 0),
    date_time_start      timestamptz NOT NULL DEFAULT now(),
    date_time_stop       timestamptz,
    note                 text NOT NULL DEFAULT '',
    secret               text,
    status               text NOT NULL DEFAULT 'active'
                         CHECK (status IN ('active', 'paused', 'disabled')),
    status_reason        text,
    -- delivery state
    next_attempt_at      timestamptz NOT NULL DEFAULT now(),
    consecutive_failures integer NOT NULL DEFAULT 0,
    last_error           text,
    last_http_status     integer,
    last_attempt_at      timestamptz,
    last_success_at      timestamptz,
    -- the claim: at most one window in flight per subscription
    claim_job            uuid,
    claim_holder         uuid,
    claimed_at           timestamptz,
    claim_window_end     timestamptz,
    claim_expires_at     timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX subscription_due ON apievents.subscription (next_attempt_at)
    WHERE status = 'active';
