-- The configuration audit's own state: one row, locked by the recorder while it compares a
-- loaded configuration with the audited one, so that recorders starting together after a
-- deploy write each change once; `applied_at_ms` is the load time of the newest configuration
-- applied, so an instance still running the previous one cannot revert the audit.

CREATE TABLE IF NOT EXISTS gateway_config_state (
    id            TINYINT      NOT NULL,
    applied_at_ms BIGINT       NOT NULL DEFAULT 0,
    applied_by    VARCHAR(255) NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

INSERT INTO gateway_config_state (id, applied_at_ms)
SELECT 1, 0 FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM gateway_config_state WHERE id = 1);
