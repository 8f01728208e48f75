-- Version 2: paging cursors, so that every replica serves every `next` link.
CREATE TABLE IF NOT EXISTS page_cursor (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    role         TEXT NOT NULL,
    organisation TEXT NOT NULL,
    purpose      TEXT NOT NULL,
    nhs          TEXT NOT NULL,
    path         TEXT NOT NULL,
    query        TEXT NOT NULL,
    lenient      INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    bundle_id    TEXT NOT NULL,
    members      TEXT NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS page_cursor_by_expiry ON page_cursor (expires_at);
