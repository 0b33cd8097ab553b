-- The record of delivery (DESIGN §2.4): one row per message, per recipient, per provider call and
-- per provider event. Written only by the recorder, idempotently: every row has a natural key
-- (message id; message id + lower-cased address; message id + gateway + call time; provider +
-- provider event id), so an event applied twice changes nothing.
--
-- Times are epoch milliseconds (BIGINT, suffix _ms): the events carry them so, instances on
-- different machines agree on them, and MySQL 8 and MariaDB 10.11 treat them identically
-- (DATETIME defaults and time-zone conversions differ between the two). JSON values (tags,
-- metadata) are stored as text written by the recorder.

CREATE TABLE IF NOT EXISTS messages (
    message_id          VARCHAR(128)  NOT NULL,
    status              VARCHAR(16)   NOT NULL COMMENT 'queued | deferred | failed | rejected | sent',
    status_at_ms        BIGINT        NULL COMMENT 'time of the outcome that set status',
    sender              VARCHAR(320)  NOT NULL,
    subject             TEXT          NOT NULL,
    gateway_id          VARCHAR(128)  NULL,
    gateway_type        VARCHAR(32)   NULL,
    provider_message_id VARCHAR(512)  NULL,
    attempts            INT           NOT NULL DEFAULT 0 COMMENT 'provider calls recorded',
    last_error          TEXT          NULL,
    retry_at_ms         BIGINT        NULL,
    campaign_id         VARCHAR(255)  NULL,
    user_id             VARCHAR(255)  NULL,
    tags                TEXT          NOT NULL COMMENT 'JSON array',
    metadata            TEXT          NOT NULL COMMENT 'JSON object',
    created_at_ms       BIGINT        NOT NULL,
    updated_at_ms       BIGINT        NOT NULL,
    PRIMARY KEY (message_id),
    KEY messages_updated (updated_at_ms),
    KEY messages_status (status, updated_at_ms),
    KEY messages_campaign (campaign_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS message_recipients (
    message_id           VARCHAR(128) NOT NULL,
    address_lc           VARCHAR(320) NOT NULL COMMENT 'lower-cased address: the key',
    address              VARCHAR(320) NOT NULL COMMENT 'as the message spelled it',
    kind                 VARCHAR(3)   NOT NULL COMMENT 'to | cc | bcc',
    delivery_status      VARCHAR(16)  NOT NULL COMMENT 'PENDING … FAILED, merged by precedence',
    gateway_id           VARCHAR(128) NULL,
    gateway_type         VARCHAR(32)  NULL,
    send_attempt_count   INT          NOT NULL DEFAULT 0,
    last_send_attempt_ms BIGINT       NULL,
    bounce_reason        TEXT         NULL,
    opens                INT          NOT NULL DEFAULT 0,
    clicks               INT          NOT NULL DEFAULT 0,
    PRIMARY KEY (message_id, address_lc),
    KEY recipients_address (address_lc)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS send_attempts (
    message_id   VARCHAR(128) NOT NULL,
    gateway_id   VARCHAR(128) NOT NULL,
    at_ms        BIGINT       NOT NULL COMMENT 'when the call started',
    gateway_type VARCHAR(32)  NOT NULL,
    outcome      VARCHAR(16)  NOT NULL COMMENT 'ok | permanent | throttled | unavailable | auth | ambiguous',
    http_status  SMALLINT     NULL,
    latency_ms   BIGINT       NOT NULL,
    error        TEXT         NULL,
    PRIMARY KEY (message_id, gateway_id, at_ms),
    KEY attempts_gateway (gateway_id, at_ms)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS delivery_events (
    provider          VARCHAR(32)  NOT NULL,
    provider_event_id VARCHAR(255) NOT NULL,
    message_id        VARCHAR(128) NULL COMMENT 'NULL when the provider did not echo our id',
    recipient         VARCHAR(320) NOT NULL,
    kind              VARCHAR(16)  NOT NULL COMMENT 'delivered | deferred | hard_bounce | …',
    at_ms             BIGINT       NOT NULL,
    diagnostic        TEXT         NULL,
    url               TEXT         NULL,
    PRIMARY KEY (provider, provider_event_id),
    KEY events_message (message_id, at_ms)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
