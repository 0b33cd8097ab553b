-- The status API reads activity by time window across every gateway (the rolling last hour,
-- the UTC day so far): index the call and delivery-event times so those reads are range scans.
-- Plain ALTER TABLE (MySQL has no CREATE INDEX IF NOT EXISTS); the migrator applies it once.

ALTER TABLE send_attempts ADD INDEX attempts_at (at_ms);
ALTER TABLE delivery_events ADD INDEX events_at (at_ms);
