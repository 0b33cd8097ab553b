-- The status API reads activity by time window across every gateway (the rolling last hour,
-- the UTC day so far): index the call times so those reads are range scans. One DDL statement
-- per migration: MySQL commits each one on its own, so a migration of two could be left half
-- applied and then fail on its rerun. Plain ALTER TABLE (MySQL has no CREATE INDEX IF NOT
-- EXISTS); the migrator applies it once.

ALTER TABLE send_attempts ADD INDEX attempts_at (at_ms);
