-- Secret rotation, time-based auto-disable, and the attempt log.
ALTER TABLE apievents.subscription ADD COLUMN previous_secret text;
ALTER TABLE apievents.subscription ADD COLUMN previous_secret_expires_at timestamptz;
ALTER TABLE apievents.subscription ADD COLUMN failing_since timestamptz;

CREATE TABLE apievents.attempt (
    attempt_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_num bigint NOT NULL
                     REFERENCES apievents.subscription (subscription_num) ON DELETE CASCADE,
    at               timestamptz NOT NULL DEFAULT now(),
    window_start     timestamptz NOT NULL,
    window_end       timestamptz NOT NULL,
    batch            integer NOT NULL,
    rows             integer NOT NULL,
    http_status      integer,
    latency_ms       integer NOT NULL,
    error_class      text
);
CREATE INDEX attempt_by_subscription ON apievents.attempt (subscription_num, attempt_id DESC);
CREATE INDEX attempt_by_time ON apievents.attempt (at);
