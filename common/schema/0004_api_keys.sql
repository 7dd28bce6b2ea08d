-- API keys for the REST API. Only a SHA-256 digest of each key is stored: keys are 256-bit
-- random tokens, so a fast hash is enough and a leaked table reveals no usable key.
CREATE TABLE apievents.api_key (
    api_key_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_key text NOT NULL,
    key_hash     text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX api_key_customer ON apievents.api_key (customer_key);
