-- A task's place in the queue and its lease are rows of their own (see the PostgreSQL
-- migration 0028 for why): a queued task has a row in `task_queue`, a running task one in
-- `task_leases`, and `tasks` keeps no index on a column a transition changes. Both are keyed
-- by the task's id alone (WITHOUT ROWID), so a claim or a result writes one b-tree fewer, and
-- neither has a foreign key to `tasks` (a task is deleted only once it has ended, when it has
-- no row in either).
CREATE TABLE task_queue (
    task_id           BLOB PRIMARY KEY NOT NULL,
    executor          TEXT NOT NULL,
    priority          INTEGER NOT NULL,
    enqueued_us       INTEGER NOT NULL,
    run_after_us      INTEGER NOT NULL,
    -- `enqueued_us` plus the task's `schedule_to_start`, for a first attempt that has one.
    start_deadline_us INTEGER
) STRICT, WITHOUT ROWID;
CREATE INDEX task_queue_order ON task_queue (priority DESC, enqueued_us, task_id);
CREATE INDEX task_queue_delayed ON task_queue (run_after_us) WHERE run_after_us > enqueued_us;
CREATE INDEX task_queue_start_deadline ON task_queue (start_deadline_us)
    WHERE start_deadline_us IS NOT NULL;

CREATE TABLE task_leases (
    task_id          BLOB PRIMARY KEY NOT NULL,
    -- NULL while the node's agent let the attempt go for another agent to adopt.
    node_id          BLOB,
    executor         TEXT NOT NULL,
    lease_expires_us INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX task_leases_node ON task_leases (node_id);
CREATE INDEX task_leases_expiry ON task_leases (lease_expires_us);

INSERT INTO task_queue (task_id, executor, priority, enqueued_us, run_after_us, start_deadline_us)
    SELECT id, executor, priority, enqueued_us, run_after_us,
        CASE WHEN attempts = 0 THEN enqueued_us + schedule_to_start_ms * 1000 END
    FROM tasks WHERE status = 'queued';
INSERT INTO task_leases (task_id, node_id, executor, lease_expires_us)
    SELECT id, node_id, executor, COALESCE(lease_expires_us, 0) FROM tasks WHERE status = 'running';

DROP INDEX tasks_queue;
DROP INDEX tasks_running;
DROP INDEX tasks_leases;
DROP INDEX tasks_status;
DROP INDEX tasks_delayed;
DROP INDEX tasks_start_deadline;
ALTER TABLE tasks DROP COLUMN node_id;
ALTER TABLE tasks DROP COLUMN lease_expires_us;
