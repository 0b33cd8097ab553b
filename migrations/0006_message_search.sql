-- Message search (`GET /api/messages?…`, `gateway messages search`): every filter it accepts as
-- a bound is answered from an index, newest first, a page at a time (keyset on created_at_ms,
-- message_id), so no search scans the record of delivery. One statement (see 0004 for why).
--
-- - recipient → message: already served by `message_recipients.recipients_address (address_lc)`
--   of 0001; InnoDB appends the primary key (message_id, address_lc) to it, so it finds a
--   patient's messages without touching other rows. Nothing to add here.
-- - sender_lc + generated column: `sender` keeps the message's spelling in a binary collation
--   (exact compares everywhere else), but support types addresses in any case. The virtual
--   column holds LOWER(sender); indexing it with created_at_ms gives a sender's messages in
--   time order. Virtual (not stored): no table rebuild, no space in the row, and writers that
--   name their columns (the recorder does) are unaffected.
-- - messages_search_campaign (campaign_id, created_at_ms): a campaign's messages in time order;
--   0001's `messages_campaign (campaign_id)` could filter but not order them.
-- - messages_search_status (status, created_at_ms): status with a time window ("failed this
--   week"); 0001's `messages_status` is on updated_at_ms, not the search's time axis.
-- - messages_created (created_at_ms): a bare since/until window, and the order of every search.

ALTER TABLE messages
    ADD COLUMN sender_lc VARCHAR(320) AS (LOWER(sender)) VIRTUAL,
    ADD INDEX messages_search_sender (sender_lc, created_at_ms),
    ADD INDEX messages_search_campaign (campaign_id, created_at_ms),
    ADD INDEX messages_search_status (status, created_at_ms),
    ADD INDEX messages_created (created_at_ms);
