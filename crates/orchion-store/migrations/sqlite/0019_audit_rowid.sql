-- The audit log's `seq` becomes a plain rowid alias instead of AUTOINCREMENT, which made every
-- transaction that appends an entry also write the `sqlite_sequence` table. The log is
-- append-only (entries are never deleted from its end), so the next rowid is always greater
-- than every one given before: `seq` still only grows and is never reused.
-- PostgreSQL's `bigserial` is kept; ../postgres/0019_audit_rowid.sql is empty on purpose.

CREATE TABLE audit_next (
    seq        INTEGER PRIMARY KEY NOT NULL,
    at_us      INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    role       TEXT,
    project_id BLOB,
    client     TEXT NOT NULL,
    method     TEXT NOT NULL,
    route      TEXT NOT NULL,
    resource   TEXT NOT NULL,
    status     INTEGER NOT NULL,
    request_id TEXT NOT NULL
) STRICT;
INSERT INTO audit_next (seq, at_us, actor, role, project_id, client, method, route, resource, status, request_id)
    SELECT seq, at_us, actor, role, project_id, client, method, route, resource, status, request_id FROM audit;
DROP TABLE audit;
ALTER TABLE audit_next RENAME TO audit;
CREATE INDEX audit_actor ON audit (actor, seq);
