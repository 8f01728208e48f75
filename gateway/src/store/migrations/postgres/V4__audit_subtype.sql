-- Version 4: each audit record's RESTful interaction (search, read, operation, create, ...),
-- for the subtype search of GET /fhir/AuditEvent. Records written before are filled in by the
-- gateway when it opens the store (the value is derived from the record by the same code that
-- derives it for new records, so verification checks it alike).
ALTER TABLE {s}.audit ADD COLUMN IF NOT EXISTS subtype TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS audit_by_subtype ON {s}.audit (subtype, seq);
