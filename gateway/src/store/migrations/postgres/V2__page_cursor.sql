-- Version 2: paging cursors, so that every replica serves every `next` link.
CREATE TABLE IF NOT EXISTS {s}.page_cursor (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    role         TEXT NOT NULL,
    organisation TEXT NOT NULL,
    purpose      TEXT NOT NULL,
    nhs          TEXT NOT NULL,
    path         TEXT NOT NULL,
    query        TEXT NOT NULL,
    lenient      BOOLEAN NOT NULL,
    count        BIGINT NOT NULL,
    bundle_id    TEXT NOT NULL,
    members      TEXT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS page_cursor_by_expiry ON {s}.page_cursor (expires_at);
