-- Version 3: the change log (consent changes, policy activations) every replica follows;
-- each insertion also notifies the channel {s}_changes.
CREATE TABLE IF NOT EXISTS {s}.change_log (
    seq     BIGSERIAL PRIMARY KEY,
    at_unix BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    nhs     TEXT,
    region  TEXT
);
CREATE INDEX IF NOT EXISTS change_log_by_time ON {s}.change_log (at_unix);
