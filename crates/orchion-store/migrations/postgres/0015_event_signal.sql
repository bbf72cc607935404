-- Every statement that appends events tells the replicas listening on `orchion` (PostgreSQL
-- sends one notification per transaction for identical ones), so their event hubs read the log
-- at once instead of polling it.
CREATE FUNCTION orchion_events_appended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orchion', 'events');
    RETURN NULL;
END
$$;
CREATE TRIGGER events_appended AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION orchion_events_appended();
