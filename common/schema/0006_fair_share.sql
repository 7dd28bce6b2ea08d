-- The producer counts the windows each due customer has in flight, to cap them
-- (APIEVENTS_MAX_WINDOWS_PER_CUSTOMER): only claimed rows are counted.
CREATE INDEX subscription_claimed ON apievents.subscription (customer_key)
    WHERE claim_job IS NOT NULL;
