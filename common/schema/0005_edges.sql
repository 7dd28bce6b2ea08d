-- An operator's edit must not re-issue a window while a POST of it may be in flight. A live
-- claim is revoked instead of dropped: its holder sends no further batch and reports, and the
-- committer then drops the claim. Until then (or until its lease runs out) nothing is re-issued.
ALTER TABLE apievents.subscription ADD COLUMN claim_revoked boolean NOT NULL DEFAULT false;

-- The highest window end issued so far, per watched database ('' is apievents' own). Every
-- end issued while a transaction was visible stayed below its start, so while a transaction
-- hides from pg_stat_activity (prepared, or in a session with track_activities off) window
-- ends stay at or below this frontier.
CREATE TABLE apievents.window_frontier (
    source     text PRIMARY KEY,
    window_end timestamptz NOT NULL
);
INSERT INTO apievents.window_frontier (source, window_end) VALUES ('', now());

-- A trigger function for any watched table: it sets the column named by its argument to now(),
-- the transaction's start, which is what the window bound relies on. For example:
--   CREATE TRIGGER procedurelog_stamp BEFORE INSERT OR UPDATE ON procedurelog
--       FOR EACH ROW EXECUTE FUNCTION apievents.stamp_now('datetstamp');
CREATE FUNCTION apievents.stamp_now() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW := jsonb_populate_record(NEW, jsonb_build_object(TG_ARGV[0], now()));
    RETURN NEW;
END $$;
