-- Checkpoints: the watermark becomes a (DateTStamp, key) cursor. cursor_key NULL means every
-- row at date_time_start was delivered; otherwise rows at date_time_start with a key above
-- cursor_key are still due. claim_seq orders the checkpoints of one claim.
ALTER TABLE apievents.subscription ADD COLUMN cursor_key text;
ALTER TABLE apievents.subscription ADD COLUMN claim_seq integer NOT NULL DEFAULT 0;
