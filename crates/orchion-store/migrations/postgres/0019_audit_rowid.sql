-- Nothing to change on PostgreSQL: see ../sqlite/0019_audit_rowid.sql. Kept so both backends
-- have the same migrations.
SELECT 1;
