-- The landed row's size as sent (eventplatform/events/arrow.py, EVENT_BYTES_FIELD): UTF-8
-- bytes of the text fields the customer sent, 8 per number or timestamp, 4 per 32-bit
-- integer, 1 per boolean; what a customer is billed for. Additive: rows landed before have it
-- null, nothing is rewritten.
ALTER TABLE {database}.events
    ADD COLUMN IF NOT EXISTS event_bytes Nullable(Int64);
