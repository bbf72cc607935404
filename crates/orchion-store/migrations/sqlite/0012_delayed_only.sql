-- The index of delayed tasks holds only tasks that are not due when queued (a run_at in the
-- future, or a retry's backoff): a task due at once has run_after_us = enqueued_us. Most tasks
-- are due at once, so most enqueues and claims no longer write it, and a planner with stale
-- statistics can no longer pick it (which it did, thinking it empty) to scan the whole queue.
DROP INDEX tasks_delayed;
CREATE INDEX tasks_delayed ON tasks (run_after_us) WHERE status = 'queued' AND run_after_us > enqueued_us;
