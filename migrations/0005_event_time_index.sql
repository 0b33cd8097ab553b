-- Bounce counts of the status API's metrics read delivery events by time window: index their
-- time (see 0004 for why this is a migration of its own).

ALTER TABLE delivery_events ADD INDEX events_at (at_ms);
