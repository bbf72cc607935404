-- Cron schedules. `job` is the job each firing runs, as JSON. `next_fire_us` (microseconds since
-- the Unix epoch) is compared, and moved on with a compare-and-set, so replicas never fire one
-- instant twice; each run's idempotency key also names the schedule and the instant.
CREATE TABLE schedules (
    id           uuid PRIMARY KEY,
    name         TEXT NOT NULL,
    cron         TEXT NOT NULL,
    timezone     TEXT NOT NULL,
    overlap      TEXT NOT NULL,
    misfire      TEXT NOT NULL,
    job          TEXT NOT NULL,
    next_fire_us BIGINT,
    last_fire_us BIGINT,
    last_run_id  uuid,
    created_at   timestamptz NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_fire_us);
