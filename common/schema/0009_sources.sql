-- Sources (issue 14): office databases (MariaDB/MySQL) that apievents watches besides its own
-- PostgreSQL. apievents' state (subscriptions, claims, checkpoints, attempts) stays here.
CREATE TABLE apievents.source (
    name       text PRIMARY KEY CHECK (name ~ '^[A-Za-z][A-Za-z0-9_]{0,30}$'),
    kind       text NOT NULL CHECK (kind IN ('mysql')),
    -- The connection URL, password included: never printed, logged or sent to the API.
    url        text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A WatchTable belongs to a source; NULL is apievents' own PostgreSQL (as before). A source's
-- WatchTables are named "<source>.<Name>", so every office can have its own Appointment.
ALTER TABLE apievents.watch_table ADD COLUMN source text REFERENCES apievents.source (name);

-- An office's CustomerKey names its source: what that customer subscribes to (through the REST
-- API as ODFHIR DK/CK, or the CLI with --customer-key) is that office's WatchTable.
CREATE TABLE apievents.customer_source (
    customer_key text PRIMARY KEY,
    source       text NOT NULL REFERENCES apievents.source (name) ON DELETE CASCADE
);
