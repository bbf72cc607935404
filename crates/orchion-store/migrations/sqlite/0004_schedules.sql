-- Cron schedules. `job` is the job each firing runs, as JSON. `next_fire_us` (microseconds since
-- the Unix epoch) is compared, and moved on with a compare-and-set, so replicas never fire one
-- instant twice; each run's idempotency key also names the schedule and the instant.
CREATE TABLE schedules (
    id           BLOB PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    cron         TEXT NOT NULL,
    timezone     TEXT NOT NULL,
    overlap      TEXT NOT NULL,
    misfire      TEXT NOT NULL,
    job          TEXT NOT NULL,
    next_fire_us INTEGER,
    last_fire_us INTEGER,
    last_run_id  BLOB,
    created_at   TEXT NOT NULL
) STRICT;
CREATE INDEX schedules_due ON schedules (next_fire_us);
