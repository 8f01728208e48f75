-- Version 1: the schema as it was before migrations were recorded (every table IF NOT EXISTS,
-- so that a store made then takes this version as it is).
CREATE TABLE IF NOT EXISTS consent (
    id          TEXT PRIMARY KEY,
    nhs         TEXT NOT NULL,
    version     INTEGER NOT NULL,
    resource    TEXT NOT NULL,
    recorded_by TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS consent_by_patient ON consent (nhs);
CREATE TABLE IF NOT EXISTS audit (
    seq                INTEGER PRIMARY KEY,
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
    released           INTEGER NOT NULL,
    withheld           INTEGER NOT NULL,
    policies           TEXT NOT NULL,
    break_glass_reason TEXT,
    status             INTEGER NOT NULL,
    outcome            TEXT NOT NULL,
    detail             TEXT NOT NULL,
    at_unix            INTEGER NOT NULL,
    region_codes       TEXT NOT NULL,
    outcome_code       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_patient ON audit (patient, seq);
CREATE INDEX IF NOT EXISTS audit_by_user ON audit (user_id, seq);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit (at_unix);
CREATE INDEX IF NOT EXISTS audit_by_request ON audit (request_id);
CREATE TABLE IF NOT EXISTS audit_checkpoint (
    seq INTEGER PRIMARY KEY,
    jws TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS policy_version (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    based_on   INTEGER,
    files      TEXT NOT NULL,
    digest     TEXT NOT NULL,
    author     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    comment    TEXT NOT NULL,
    origin     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS policy_activation (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    version      INTEGER NOT NULL REFERENCES policy_version (id),
    activated_by TEXT NOT NULL,
    activated_at TEXT NOT NULL,
    reason       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS break_glass_review (
    audit_seq   INTEGER PRIMARY KEY,
    reviewer    TEXT NOT NULL,
    reviewed_at TEXT NOT NULL,
    note        TEXT NOT NULL
);
