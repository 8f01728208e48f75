-- Version 3: the change log (consent changes, policy activations) every replica follows.
CREATE TABLE IF NOT EXISTS change_log (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at_unix INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    nhs     TEXT,
    region  TEXT
);
CREATE INDEX IF NOT EXISTS change_log_by_time ON change_log (at_unix);
