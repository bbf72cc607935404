-- PostgreSQL's replicas hear of appended events through a trigger (see
-- ../postgres/0015_event_signal.sql); one SQLite server needs none. Kept so both backends
-- count the same migrations.
SELECT 1;
