-- Gateway tracking (the original system's 002_gateway_tracking, actually written and read).
--
-- gateway_usage_stats: per gateway per UTC hour (stat_hour 0–23) of stat_date, counted by the
-- recorder only from rows it newly inserted (a provider call, a provider event, a breaker
-- transition), so a replayed event never counts twice. Daily figures are sums over the hours.

CREATE TABLE IF NOT EXISTS gateway_usage_stats (
    gateway_id        VARCHAR(128) NOT NULL,
    stat_date         DATE         NOT NULL COMMENT 'UTC day',
    stat_hour         TINYINT      NOT NULL COMMENT 'UTC hour, 0-23',
    attempts          INT          NOT NULL DEFAULT 0 COMMENT 'provider calls',
    sent              INT          NOT NULL DEFAULT 0 COMMENT 'calls the provider accepted',
    failed            INT          NOT NULL DEFAULT 0 COMMENT 'calls refused permanently',
    deferred          INT          NOT NULL DEFAULT 0 COMMENT 'calls that failed transiently (throttled, unavailable, auth, ambiguous)',
    bounced           INT          NOT NULL DEFAULT 0 COMMENT 'hard and soft bounce events',
    total_latency_ms  BIGINT       NOT NULL DEFAULT 0,
    rate_limit_hits   INT          NOT NULL DEFAULT 0 COMMENT 'calls answered 429',
    breaker_trips     INT          NOT NULL DEFAULT 0 COMMENT 'transitions to open',
    opens             INT          NOT NULL DEFAULT 0,
    clicks            INT          NOT NULL DEFAULT 0,
    unique_opens      INT          NOT NULL DEFAULT 0 COMMENT 'recipients opening for the first time',
    unique_clicks     INT          NOT NULL DEFAULT 0 COMMENT 'recipients clicking for the first time',
    PRIMARY KEY (gateway_id, stat_date, stat_hour)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS gateway_health_status (
    gateway_id            VARCHAR(128) NOT NULL,
    gateway_type          VARCHAR(32)  NOT NULL,
    status                VARCHAR(16)  NOT NULL COMMENT 'HEALTHY | DEGRADED | UNHEALTHY | DISABLED',
    latency_ms            BIGINT       NULL,
    consecutive_failures  INT          NOT NULL DEFAULT 0,
    consecutive_successes INT          NOT NULL DEFAULT 0,
    last_error            TEXT         NULL,
    breaker_state         VARCHAR(16)  NULL COMMENT 'closed | open | half_open, from the latest transition',
    breaker_changed_at_ms BIGINT       NULL,
    checked_at_ms         BIGINT       NOT NULL COMMENT 'time of the latest probe applied',
    PRIMARY KEY (gateway_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS breaker_transitions (
    gateway_id  VARCHAR(128) NOT NULL,
    at_ms       BIGINT       NOT NULL,
    from_phase  VARCHAR(16)  NOT NULL,
    to_phase    VARCHAR(16)  NOT NULL,
    reason      TEXT         NOT NULL COMMENT 'JSON',
    PRIMARY KEY (gateway_id, at_ms, from_phase, to_phase)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS gateway_config_audit (
    id          BIGINT       NOT NULL AUTO_INCREMENT,
    gateway_id  VARCHAR(128) NOT NULL,
    action      VARCHAR(16)  NOT NULL COMMENT 'CREATED | UPDATED | DELETED | ENABLED | DISABLED',
    old_config  TEXT         NULL COMMENT 'JSON, secrets redacted',
    new_config  TEXT         NULL COMMENT 'JSON, secrets redacted',
    changed_by  VARCHAR(255) NOT NULL,
    reason      TEXT         NULL,
    at_ms       BIGINT       NOT NULL,
    PRIMARY KEY (id),
    KEY audit_gateway (gateway_id, at_ms)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS gateway_routing_rules (
    id          BIGINT       NOT NULL AUTO_INCREMENT,
    rule_type   VARCHAR(16)  NOT NULL COMMENT 'PATTERN | DOMAIN | USER | CAMPAIGN | FALLBACK',
    gateway_id  VARCHAR(128) NOT NULL,
    priority    INT          NOT NULL,
    conditions  TEXT         NOT NULL COMMENT 'JSON',
    enabled     BOOLEAN      NOT NULL DEFAULT TRUE,
    updated_at_ms BIGINT     NOT NULL,
    PRIMARY KEY (id),
    KEY rules_gateway (gateway_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Per gateway, all time.
CREATE OR REPLACE VIEW gateway_performance_summary AS
SELECT
    gateway_id,
    SUM(attempts)      AS total_attempts,
    SUM(sent)          AS sent,
    SUM(bounced)       AS bounced,
    SUM(failed)        AS failed,
    SUM(deferred)      AS deferred,
    CASE WHEN SUM(attempts) = 0 THEN NULL
         ELSE ROUND(100 * SUM(sent) / SUM(attempts), 2) END AS success_rate,
    CASE WHEN SUM(attempts) = 0 THEN NULL
         ELSE ROUND(SUM(total_latency_ms) / SUM(attempts), 1) END AS avg_latency_ms,
    SUM(opens)         AS opens,
    SUM(clicks)        AS clicks,
    SUM(unique_opens)  AS unique_opens,
    SUM(unique_clicks) AS unique_clicks,
    SUM(rate_limit_hits) AS rate_limit_hits,
    SUM(breaker_trips) AS breaker_trips
FROM gateway_usage_stats
GROUP BY gateway_id;

-- Per gateway per UTC day, the last 30 days.
CREATE OR REPLACE VIEW daily_gateway_stats AS
SELECT
    gateway_id,
    stat_date,
    SUM(attempts)      AS total_attempts,
    SUM(sent)          AS sent,
    SUM(bounced)       AS bounced,
    SUM(failed)        AS failed,
    SUM(deferred)      AS deferred,
    CASE WHEN SUM(attempts) = 0 THEN NULL
         ELSE ROUND(100 * SUM(sent) / SUM(attempts), 2) END AS success_rate,
    SUM(opens)         AS opens,
    SUM(clicks)        AS clicks,
    SUM(unique_opens)  AS unique_opens,
    SUM(unique_clicks) AS unique_clicks
FROM gateway_usage_stats
WHERE stat_date >= UTC_DATE() - INTERVAL 30 DAY
GROUP BY gateway_id, stat_date;

-- Latest health joined with today's (UTC) volume and success rate.
CREATE OR REPLACE VIEW gateway_health_summary AS
SELECT
    h.gateway_id,
    h.gateway_type,
    h.status,
    h.latency_ms,
    h.consecutive_failures,
    h.consecutive_successes,
    h.last_error,
    h.breaker_state,
    h.checked_at_ms,
    COALESCE(t.attempts, 0) AS today_attempts,
    COALESCE(t.sent, 0)     AS today_sent,
    CASE WHEN COALESCE(t.attempts, 0) = 0 THEN NULL
         ELSE ROUND(100 * t.sent / t.attempts, 2) END AS today_success_rate
FROM gateway_health_status h
LEFT JOIN (
    SELECT gateway_id, SUM(attempts) AS attempts, SUM(sent) AS sent
    FROM gateway_usage_stats
    WHERE stat_date = UTC_DATE()
    GROUP BY gateway_id
) t ON t.gateway_id = h.gateway_id;
