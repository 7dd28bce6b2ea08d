-- Open Dental compatibility (issue 13).
--
-- A payload format per WatchTable. 'iso' is the original rendering; 'opendental' renders rows
-- the way Open Dental's webhooks do, and needs three more things from the registry:
--   enums      {"column": {"0": "Name", ...}}: enum columns, sent by name;
--   derived    [{"field", "column", "after", "lookup": [schema, table, key, value]} or
--              {"field", "column", "after", "rgb": true}]: the lower-case fields Open Dental
--              adds (a name read from another table, or a color as "R,G,B");
--   row_filter {"column": value}: only rows with these values are delivered, so a WatchTable
--              can be one kind of row of a shared table (AppointmentDeleted in histappointment).
ALTER TABLE apievents.watch_table
    ADD COLUMN payload_format text NOT NULL DEFAULT 'iso'
        CHECK (payload_format IN ('iso', 'opendental')),
    ADD COLUMN enums jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN derived jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN row_filter jsonb NOT NULL DEFAULT '{}';

-- Open Dental's Subscriptions API carries UiEventType ("" or "PatientSelected"). It is stored
-- and answered as given; only database events are delivered.
ALTER TABLE apievents.subscription ADD COLUMN ui_event_type text NOT NULL DEFAULT '';
