-- Version 1: the schema as it was before migrations were recorded (every table IF NOT EXISTS,
-- so that a store made then takes this version as it is).
CREATE TABLE IF NOT EXISTS {s}.consent (
    seq         BIGSERIAL,
    id          TEXT PRIMARY KEY,
    nhs         TEXT NOT NULL,
    version     BIGINT NOT NULL,
    resource    JSONB NOT NULL,
    recorded_by TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS consent_by_patient ON {s}.consent (nhs);
CREATE TABLE IF NOT EXISTS {s}.audit (
    seq                BIGINT PRIMARY KEY,
    prev_hash          TEXT NOT NULL,
    hash               TEXT NOT NULL,
    time               TEXT NOT NULL,
    kind               TEXT NOT NULL,
    request_id         TEXT NOT NULL,
    user_id            TEXT NOT NULL,
    role               TEXT NOT NULL,
    organisation       TEXT NOT NULL,
    purpose_of_use     TEXT NOT NULL,
    patient            TEXT,
    regions            TEXT NOT NULL,
    released           BIGINT NOT NULL,
    withheld           BIGINT NOT NULL,
    policies           TEXT NOT NULL,
    break_glass_reason TEXT,
    status             BIGINT NOT NULL,
    outcome            TEXT NOT NULL,
    detail             TEXT NOT NULL,
    at_unix            BIGINT NOT NULL,
    region_codes       TEXT NOT NULL,
    outcome_code       BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_patient ON {s}.audit (patient, seq);
CREATE INDEX IF NOT EXISTS audit_by_user ON {s}.audit (user_id, seq);
CREATE INDEX IF NOT EXISTS audit_by_time ON {s}.audit (at_unix);
CREATE INDEX IF NOT EXISTS audit_by_request ON {s}.audit (request_id);
CREATE TABLE IF NOT EXISTS {s}.audit_checkpoint (
    seq BIGINT PRIMARY KEY,
    jws TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.policy_version (
    id         BIGSERIAL PRIMARY KEY,
    based_on   BIGINT,
    files      TEXT NOT NULL,
    digest     TEXT NOT NULL,
    author     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    comment    TEXT NOT NULL,
    origin     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.policy_activation (
    seq          BIGSERIAL PRIMARY KEY,
    version      BIGINT NOT NULL REFERENCES {s}.policy_version (id),
    activated_by TEXT NOT NULL,
    activated_at TEXT NOT NULL,
    reason       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.break_glass_review (
    audit_seq   BIGINT PRIMARY KEY,
    reviewer    TEXT NOT NULL,
    reviewed_at TEXT NOT NULL,
    note        TEXT NOT NULL
);
