-- The audit log is read in `seq` order with optional filters (`? IS NULL OR actor = ?`), a form
-- no planner answers from an index on `actor`: the query walks `seq` and filters. The index was
-- only written, on every entry and so on every job created through the API. Dropped.
DROP INDEX IF EXISTS audit_actor;
