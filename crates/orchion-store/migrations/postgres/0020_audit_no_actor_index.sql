-- See ../sqlite/0020_audit_no_actor_index.sql: the index was written on every entry and read by
-- no query.
DROP INDEX IF EXISTS audit_actor;
